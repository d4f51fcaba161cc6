//! Load averages from `/proc/loadavg`.

use serde::Serialize;

use super::SampleError;

/// The file this signal reads, relative to the proc root.
pub const PATH: &str = "loadavg";

/// The 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Load {
    /// Over 1 minute.
    pub one: f64,
    /// Over 5 minutes.
    pub five: f64,
    /// Over 15 minutes.
    pub fifteen: f64,
}

/// Parses the text of `/proc/loadavg`: its first three fields (the runnable and
/// total tasks and the last pid follow, unused).
pub fn parse(text: &str) -> Result<Load, SampleError> {
    let mut averages = text.split_ascii_whitespace().map(str::parse::<f64>);
    let mut next = |which: &str| match averages.next() {
        Some(Ok(x)) => Ok(x),
        _ => Err(SampleError::format(
            PATH,
            format!("no {which} load average"),
        )),
    };
    Ok(Load {
        one: next("1-minute")?,
        five: next("5-minute")?,
        fifteen: next("15-minute")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_loadavg() {
        let text = include_str!("../../tests/fixtures/loadavg.txt");
        let expected: Vec<f64> = text
            .split_whitespace()
            .take(3)
            .map(|x| x.parse().unwrap())
            .collect();
        let l = parse(text).unwrap();
        assert_eq!(vec![l.one, l.five, l.fifteen], expected);
    }

    #[test]
    fn keeps_the_two_decimals_the_kernel_prints() {
        let l = parse("0.10 0.42 12.24 4/104 16376\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.10, 0.42, 12.24));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("a b c").is_err());
    }
}
