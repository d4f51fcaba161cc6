//! Words and numbers out of a kernel file's text, byte by byte.
//!
//! The files the agent reads at every sample are ASCII columns of decimal numbers.
//! `str::split_ascii_whitespace` and `str::parse` check for cases these files never
//! have (Unicode, signs, exponents); scanning the bytes directly took the parsers that
//! use it from about 3 000 to a few hundred instructions per file. Anything that is not
//! a plain decimal is refused (`None`), and the caller reports the file as malformed.

/// The lines of `text`, without their `\n`.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(line)
    })
}

/// The words of `line`: runs of bytes between spaces, tabs, line ends or other ASCII
/// control bytes (one comparison per byte, where `is_ascii_whitespace` makes five).
#[derive(Debug, Clone)]
pub struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Words<'a> {
    /// The words of `line`, from its start.
    pub fn new(line: &'a [u8]) -> Self {
        Self { rest: line }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b > b' ')?;
        let rest = &self.rest[start..];
        let end = rest.iter().position(|&b| b <= b' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// A word of decimal digits as a number; `None` for anything else or an overflow.
pub fn u64(word: &[u8]) -> Option<u64> {
    if word.is_empty() {
        return None;
    }
    word.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A word of the form `123` or `123.45` as a float, rounded exactly as `str::parse`
/// rounds it: both parts are read as one integer, exact below 2^53, and divided by an
/// exact power of ten, which IEEE division rounds correctly. `None` for anything else.
pub fn decimal(word: &[u8]) -> Option<f64> {
    let (whole, fraction) = match word.iter().position(|&b| b == b'.') {
        Some(dot) if dot + 1 < word.len() => (&word[..dot], &word[dot + 1..]),
        Some(_) => return None,
        None => (word, &[][..]),
    };
    let scale = *POWERS_OF_TEN.get(fraction.len())?;
    let digits = u64(whole)?
        .checked_mul(scale)?
        .checked_add(if fraction.is_empty() {
            0
        } else {
            u64(fraction)?
        })?;
    if digits >= 1 << 53 {
        // Not exact as a float: let the standard parser round it.
        return std::str::from_utf8(word).ok()?.parse().ok();
    }
    Some(digits as f64 / scale as f64)
}

/// 10^0 to 10^15: exact as floats, and enough for any decimal the kernel prints.
const POWERS_OF_TEN: [u64; 16] = {
    let mut powers = [1u64; 16];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_on_newlines_only() {
        let all: Vec<&[u8]> = lines(b"a b\n\nc\td\n").collect();
        assert_eq!(all, [&b"a b"[..], b"", b"c\td"]);
        assert_eq!(lines(b"no newline").count(), 1);
        assert_eq!(lines(b"").count(), 0);
    }

    #[test]
    fn words_skip_any_run_of_ascii_whitespace() {
        let all: Vec<&[u8]> = Words::new(b"  7  0 loop0\t12 \r\n").collect();
        assert_eq!(all, [&b"7"[..], b"0", b"loop0", b"12"]);
        assert_eq!(Words::new(b"   ").next(), None);
    }

    #[test]
    fn integers_are_plain_decimal_digits() {
        assert_eq!(u64(b"0"), Some(0));
        assert_eq!(u64(b"18446744073709551615"), Some(u64::MAX));
        refused(
            u64,
            &["", "18446744073709551616", "-5", "+5", "1.0", "12a", " 1"],
        );
    }

    /// Checks that `parse` refuses each of `words`.
    fn refused<T: std::fmt::Debug>(parse: fn(&[u8]) -> Option<T>, words: &[&str]) {
        for word in words {
            assert!(parse(word.as_bytes()).is_none(), "{word:?}");
        }
    }

    #[test]
    fn decimals_round_as_the_standard_parser_does() {
        for text in [
            "0.00",
            "0.10",
            "0.42",
            "12.24",
            "3.35",
            "100.00",
            "99.99",
            "7",
            "1.5",
            "123456.789",
            "0.1234567890123",
            "9007199254.740993",
            "123456789012345.678",
        ] {
            let expected: f64 = text.parse().unwrap();
            assert_eq!(decimal(text.as_bytes()), Some(expected), "{text}");
        }
        // Every two-decimal value the kernel prints for a pressure average.
        for hundredths in 0..=10_000u32 {
            let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
            assert_eq!(decimal(text.as_bytes()), text.parse().ok(), "{text}");
        }
        refused(
            decimal,
            &[
                "",
                ".",
                "1.",
                ".5",
                "1.2.3",
                "-1.0",
                "1e3",
                "nan",
                "1.0000000000000000",
            ],
        );
    }
}
