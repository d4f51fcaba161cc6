//! Network throughput per interface from `/proc/net/dev` (loopback excluded).

use std::time::Duration;

use serde::Serialize;

use super::{SampleError, scan};

/// The file this signal reads, relative to the proc root.
pub const PATH: &str = "net/dev";

/// One interface's counters since it appeared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors plus drops.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors plus drops.
    pub tx_errors: u64,
}

/// One interface's throughput over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetRate {
    /// Interface name.
    pub name: String,
    /// Bytes received per second.
    pub rx_bytes_per_second: f64,
    /// Bytes sent per second.
    pub tx_bytes_per_second: f64,
    /// Packets received per second.
    pub rx_packets_per_second: f64,
    /// Packets sent per second.
    pub tx_packets_per_second: f64,
    /// Receive errors plus drops during the interval.
    pub rx_errors: u64,
    /// Transmit errors plus drops during the interval.
    pub tx_errors: u64,
}

/// Parses `/proc/net/dev` into `(interface, counters)`, sorted by name, without
/// loopback.
///
/// Parsed here rather than with procfs: the kernel prints `name:counter` with no space
/// when the first counter fills its column (older kernels use `%6s:%8llu`), which a
/// whitespace split takes for one word.
pub fn parse(text: impl AsRef<[u8]>) -> Result<Vec<(String, NetCounters)>, SampleError> {
    let text = text.as_ref();
    let mut out = Vec::new();
    // The first two lines are headers.
    for line in scan::lines(text).skip(2) {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| SampleError::format(PATH, "an interface line has no ':'"))?;
        let name = line[..colon].trim_ascii();
        if name == b"lo" {
            continue;
        }
        let mut fields = [0u64; 16];
        let mut n = 0;
        for (slot, word) in fields.iter_mut().zip(scan::Words::new(&line[colon + 1..])) {
            *slot = scan::u64(word)
                .ok_or_else(|| SampleError::format(PATH, "a counter is not a number"))?;
            n += 1;
        }
        if n < fields.len() {
            return Err(SampleError::format(
                PATH,
                "an interface line has too few counters",
            ));
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast;
        // transmit: bytes packets errs drop fifo colls carrier compressed.
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            NetCounters {
                rx_bytes: fields[0],
                rx_packets: fields[1],
                rx_errors: fields[2].saturating_add(fields[3]),
                tx_bytes: fields[8],
                tx_packets: fields[9],
                tx_errors: fields[10].saturating_add(fields[11]),
            },
        ));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Rates between two readings `elapsed` apart, for interfaces present in both. An
/// interface whose counters went backwards (re-created, or its driver reset them) is
/// left out of this interval rather than reported with a negative or huge rate.
pub fn rates(
    prev: &[(String, NetCounters)],
    cur: &[(String, NetCounters)],
    elapsed: Duration,
) -> Vec<NetRate> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Vec::new();
    }
    cur.iter()
        .filter_map(|(name, c)| {
            let i = prev.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok()?;
            let p = &prev[i].1;
            let d = |a: u64, b: u64| b.checked_sub(a);
            Some(NetRate {
                name: name.clone(),
                rx_bytes_per_second: d(p.rx_bytes, c.rx_bytes)? as f64 / secs,
                tx_bytes_per_second: d(p.tx_bytes, c.tx_bytes)? as f64 / secs,
                rx_packets_per_second: d(p.rx_packets, c.rx_packets)? as f64 / secs,
                tx_packets_per_second: d(p.tx_packets, c.tx_packets)? as f64 / secs,
                rx_errors: d(p.rx_errors, c.rx_errors)?,
                tx_errors: d(p.tx_errors, c.tx_errors)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = include_str!("../../tests/fixtures/net-dev-a.txt");
    const B: &str = include_str!("../../tests/fixtures/net-dev-b.txt");

    #[test]
    fn parses_without_loopback_sorted() {
        let a = parse(A).unwrap();
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["eth0", "ifb0", "ifb1"]);
        assert_eq!(a[0].1.rx_bytes, 166291957);
        assert_eq!(a[0].1.tx_packets, 3943);
    }

    #[test]
    fn parses_a_counter_glued_to_the_name() {
        // net-dev-b.txt prints eth0 as "eth0:167291957", as kernels do when the
        // counter fills its column.
        let b = parse(B).unwrap();
        assert_eq!(b[0].0, "eth0");
        assert_eq!(b[0].1.rx_bytes, 167291957);
        assert_eq!(b[0].1.rx_errors, 3, "errors plus drops");
    }

    #[test]
    fn rates_over_two_seconds() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        let r = rates(&a, &b, Duration::from_secs(2));
        assert_eq!(r.len(), 3);
        let eth0 = &r[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.rx_bytes_per_second, 500_000.0);
        assert_eq!(eth0.tx_bytes_per_second, 25_000.0);
        assert_eq!(eth0.rx_packets_per_second, 500.0);
        assert_eq!(eth0.tx_packets_per_second, 250.0);
        assert_eq!((eth0.rx_errors, eth0.tx_errors), (3, 1));
        assert!(r.iter().all(|n| n.name != "lo"));
    }

    #[test]
    fn counters_going_backwards_skip_the_interface() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        let r = rates(&b, &a, Duration::from_secs(1));
        // eth0 went backwards; ifb0/ifb1 stayed at zero.
        assert_eq!(
            r.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            vec!["ifb0", "ifb1"]
        );
        assert!(r.iter().all(|n| n.rx_bytes_per_second == 0.0));
    }

    #[test]
    fn a_new_interface_waits_for_its_second_reading() {
        let (a, mut b) = (parse(A).unwrap(), parse(B).unwrap());
        b.push(("veth9".into(), NetCounters::default()));
        let r = rates(&a, &b, Duration::from_secs(1));
        assert!(r.iter().all(|n| n.name != "veth9"));
    }

    #[test]
    fn no_time_no_rates() {
        let a = parse(A).unwrap();
        assert!(rates(&a, &a, Duration::ZERO).is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("h\nh\neth0 1 2 3\n").is_err());
        assert!(parse("h\nh\neth0: 1 2 3\n").is_err());
        assert!(parse("h\nh\neth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x\n").is_err());
    }
}
