//! Linux pressure stall information from `/proc/pressure/{cpu,memory,io}`.
//!
//! A kernel without PSI (older than 4.20, or built or booted without it) has no such
//! files, or refuses to read them: the signal is then *absent*, which is normal and
//! never an error. `full` is missing from the cpu file on kernels before 5.13.
//!
//! Each line is `some|full avg10=A avg60=B avg300=C total=N` (the kernel's
//! `Documentation/accounting/psi.rst`). Parsed here rather than with procfs, which
//! builds a hash map of the line's fields for every line of every sample.

use serde::Serialize;

use super::{SampleError, scan};

/// The files this signal reads, relative to the proc root.
pub const PATHS: [&str; 3] = ["pressure/cpu", "pressure/memory", "pressure/io"];

/// Pressure on the three resources; a resource the kernel does not report is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pressure {
    /// `/proc/pressure/cpu`.
    pub cpu: Option<PressureResource>,
    /// `/proc/pressure/memory`.
    pub memory: Option<PressureResource>,
    /// `/proc/pressure/io`.
    pub io: Option<PressureResource>,
}

/// One PSI file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PressureResource {
    /// Some tasks stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled at once (absent for cpu before Linux 5.13).
    pub full: Option<PressureLine>,
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PressureLine {
    /// Percent of wall time stalled over the last 10 s.
    pub avg10: f64,
    /// Over the last 60 s.
    pub avg60: f64,
    /// Over the last 300 s.
    pub avg300: f64,
    /// Total stall time since boot, in microseconds.
    pub total_us: u64,
}

/// Parses one PSI file: a `some` line and, usually, a `full` line.
pub fn parse_resource(
    path: &'static str,
    text: impl AsRef<[u8]>,
) -> Result<PressureResource, SampleError> {
    let text = text.as_ref();
    let mut some = None;
    let mut full = None;
    for line in scan::lines(text) {
        let mut words = scan::Words::new(line);
        let Some(kind) = words.next() else {
            continue;
        };
        let (slot, kind) = match kind {
            b"some" => (&mut some, "some"),
            b"full" => (&mut full, "full"),
            _ => {
                let kind = String::from_utf8_lossy(kind);
                return Err(SampleError::format(path, format!("unknown line `{kind}`")));
            }
        };
        *slot = Some(
            parse_line(words)
                .ok_or_else(|| SampleError::format(path, format!("malformed `{kind}` line")))?,
        );
    }
    let some = some.ok_or_else(|| SampleError::format(path, "no `some` line"))?;
    Ok(PressureResource { some, full })
}

/// The fields of one line, after `some` or `full`; `None` if one is missing or not a
/// number. Averages keep the two decimals the kernel prints.
fn parse_line(fields: scan::Words<'_>) -> Option<PressureLine> {
    let (mut avg10, mut avg60, mut avg300, mut total_us) = (None, None, None, None);
    for field in fields {
        let equals = field.iter().position(|&b| b == b'=')?;
        let (key, value) = (&field[..equals], &field[equals + 1..]);
        match key {
            b"avg10" => avg10 = Some(scan::decimal(value)?),
            b"avg60" => avg60 = Some(scan::decimal(value)?),
            b"avg300" => avg300 = Some(scan::decimal(value)?),
            b"total" => total_us = Some(scan::u64(value)?),
            // A field a later kernel may add.
            _ => {}
        }
    }
    Some(PressureLine {
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
        total_us: total_us?,
    })
}

/// Combines the three files' texts (`None` = the kernel does not have that file) into
/// one figure; `None` when the kernel has no PSI at all.
pub fn assemble<T: AsRef<[u8]>>(texts: [Option<T>; 3]) -> Result<Option<Pressure>, SampleError> {
    let [cpu, memory, io] = texts;
    if cpu.is_none() && memory.is_none() && io.is_none() {
        return Ok(None);
    }
    let parse = |path, text: Option<T>| text.map(|t| parse_resource(path, t)).transpose();
    Ok(Some(Pressure {
        cpu: parse(PATHS[0], cpu)?,
        memory: parse(PATHS[1], memory)?,
        io: parse(PATHS[2], io)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = include_str!("../../tests/fixtures/pressure/cpu.txt");
    const MEMORY: &str = include_str!("../../tests/fixtures/pressure/memory.txt");
    const IO: &str = include_str!("../../tests/fixtures/pressure/io.txt");
    const CPU_WITHOUT_FULL: &str =
        include_str!("../../tests/fixtures/pressure-cpu-without-full.txt");

    #[test]
    fn parses_real_psi_files() {
        let p = assemble([Some(CPU), Some(MEMORY), Some(IO)])
            .unwrap()
            .unwrap();
        let io = p.io.unwrap();
        assert_eq!(io.some.total_us, 9115148);
        assert_eq!(io.some.avg60, 3.28);
        assert_eq!(io.full.unwrap().avg300, 1.36);
        assert_eq!(p.cpu.unwrap().some.avg300, 3.35);
        assert_eq!(p.memory.unwrap().full.unwrap().total_us, 0);
    }

    #[test]
    fn cpu_without_full_is_fine() {
        let cpu = parse_resource(PATHS[0], CPU_WITHOUT_FULL).unwrap();
        assert_eq!(cpu.full, None);
        assert_eq!(cpu.some.avg10, 1.5);
        assert_eq!(cpu.some.total_us, 123456789);
    }

    #[test]
    fn a_kernel_without_psi_is_absent_not_an_error() {
        assert_eq!(assemble::<&str>([None, None, None]).unwrap(), None);
    }

    #[test]
    fn a_missing_resource_is_absent_alone() {
        let p = assemble([Some(CPU), None, Some(IO)]).unwrap().unwrap();
        assert!(p.cpu.is_some() && p.memory.is_none() && p.io.is_some());
    }

    #[test]
    fn a_garbled_file_is_an_error() {
        assert!(assemble([Some("some avg10=x\n"), None, None]).is_err());
        assert!(parse_resource(PATHS[2], "").is_err());
        assert!(parse_resource(PATHS[2], "some\n").is_err());
        assert!(parse_resource(PATHS[2], "some avg10=1.00 avg60=1.00 total=5\n").is_err());
        assert!(
            parse_resource(PATHS[2], "most avg10=1.00 avg60=1.00 avg300=1.00 total=5\n").is_err()
        );
        assert!(
            parse_resource(
                PATHS[2],
                "some avg10=1.00 avg60=1.00 avg300=1.00 total=-5\n"
            )
            .is_err()
        );
    }

    #[test]
    fn averages_keep_the_kernels_two_decimals() {
        let r = parse_resource(
            PATHS[0],
            "some avg10=0.42 avg60=12.24 avg300=0.10 total=7\n",
        )
        .unwrap();
        assert_eq!(
            (r.some.avg10, r.some.avg60, r.some.avg300),
            (0.42, 12.24, 0.10)
        );
        assert_eq!(r.some.total_us, 7);
    }
}
