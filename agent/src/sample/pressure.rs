//! Linux pressure stall information from `/proc/pressure/{cpu,memory,io}`.
//!
//! A kernel without PSI (older than 4.20, or built or booted without it) has no such
//! files, or refuses to read them: the signal is then *absent*, which is normal and
//! never an error. `full` is missing from the cpu file on kernels before 5.13.

use procfs::parse_pressure_record;
use serde::Serialize;

use super::SampleError;

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
pub fn parse_resource(path: &'static str, text: &str) -> Result<PressureResource, SampleError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // procfs slices past the 5-byte "some " prefix without checking the length.
        if line.len() < 5 {
            return Err(SampleError::format(path, "truncated line"));
        }
        let record = parse_pressure_record(line).map_err(|e| SampleError::parse(path, e))?;
        let parsed = PressureLine {
            avg10: super::hundredths(record.avg10),
            avg60: super::hundredths(record.avg60),
            avg300: super::hundredths(record.avg300),
            total_us: record.total,
        };
        if line.starts_with("some") {
            some = Some(parsed);
        } else {
            full = Some(parsed);
        }
    }
    let some = some.ok_or_else(|| SampleError::format(path, "no `some` line"))?;
    Ok(PressureResource { some, full })
}

/// Combines the three files' texts (`None` = the kernel does not have that file) into
/// one figure; `None` when the kernel has no PSI at all.
pub fn assemble(texts: [Option<&str>; 3]) -> Result<Option<Pressure>, SampleError> {
    let [cpu, memory, io] = texts;
    if cpu.is_none() && memory.is_none() && io.is_none() {
        return Ok(None);
    }
    let parse = |path, text: Option<&str>| text.map(|t| parse_resource(path, t)).transpose();
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
        assert_eq!(assemble([None, None, None]).unwrap(), None);
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
    }
}
