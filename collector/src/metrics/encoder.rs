//! A small writer of the Prometheus text exposition format 0.0.4: families (HELP and
//! TYPE), samples with escaped labels, and helpers for one sample per VM.

use std::fmt::Write as _;

use crate::fleet::VmSummary;

/// A sample value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

/// Writes families in the text format; every sample of a family follows its header.
///
/// Without a sink the text accumulates in `out`; with one (see [`Exposition::to`]) it
/// is handed over in pieces of about [`PIECE`] bytes, so a large fleet's text (over
/// 100 MB at 20 000 VMs) is never held whole when it is compressed on the way out.
#[derive(Default)]
pub(super) struct Exposition<'a> {
    pub(super) out: String,
    sink: Option<&'a mut dyn std::io::Write>,
    /// The sink's first error; nothing more is written after it.
    failed: Option<std::io::Error>,
}

/// How much text an [`Exposition`] with a sink gathers before handing it over.
const PIECE: usize = 64 * 1024;

impl std::fmt::Debug for Exposition<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("buffered", &self.out.len())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl<'a> Exposition<'a> {
    /// An exposition that writes to `sink` as it goes.
    pub(super) fn to(sink: &'a mut dyn std::io::Write) -> Self {
        Self {
            out: String::with_capacity(PIECE + PIECE / 4),
            sink: Some(sink),
            failed: None,
        }
    }

    /// Hands the rest to the sink; the sink's first error if it had one.
    pub(super) fn finish(mut self) -> std::io::Result<()> {
        self.hand_over();
        self.failed.map_or(Ok(()), Err)
    }

    /// Hands `out` to the sink once a piece is full.
    fn spill(&mut self) {
        if self.out.len() >= PIECE {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if self.failed.is_none()
            && let Err(e) = sink.write_all(self.out.as_bytes())
        {
            self.failed = Some(e);
        }
        self.out.clear();
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Gauge,
    Counter,
}

impl Exposition<'_> {
    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self.spill();
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                if value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
                    for c in value.chars() {
                        match c {
                            '\\' => self.out.push_str(r"\\"),
                            '"' => self.out.push_str("\\\""),
                            '\n' => self.out.push_str(r"\n"),
                            c => self.out.push(c),
                        }
                    }
                } else {
                    self.out.push_str(value);
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        let _ = match value.into() {
            Value::Int(v) => writeln!(self.out, "{v}"),
            Value::Float(v) if v.is_nan() => writeln!(self.out, "NaN"),
            Value::Float(v) if v == f64::INFINITY => writeln!(self.out, "+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => writeln!(self.out, "-Inf"),
            Value::Float(v) => writeln!(self.out, "{v}"),
        };
        self.spill();
    }

    /// A family with one sample per VM for which `value` has something.
    pub(super) fn per_vm<V: Into<Value>>(
        &mut self,
        vms: &[VmSummary],
        name: &str,
        kind: Kind,
        help: &str,
        value: impl Fn(&VmSummary) -> Option<V>,
    ) {
        self.family(name, kind, help);
        for vm in vms {
            if let Some(v) = value(vm) {
                self.sample(name, &[("vm", &vm.id), ("group", &vm.group)], v);
            }
        }
    }

    /// A family with an extra label per VM (e.g. `resource`, `window`).
    pub(super) fn per_vm_and<V: Into<Value>>(
        &mut self,
        vms: &[VmSummary],
        name: &str,
        help: &str,
        label: &str,
        variants: &[&str],
        value: impl Fn(&VmSummary, &str) -> Option<V>,
    ) {
        self.family(name, Kind::Gauge, help);
        for vm in vms {
            for variant in variants {
                if let Some(v) = value(vm, variant) {
                    self.sample(
                        name,
                        &[("vm", &vm.id), ("group", &vm.group), (label, variant)],
                        v,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn a_sink_gets_the_same_text_in_pieces() {
        let write = |e: &mut Exposition<'_>| {
            e.family("x", Kind::Counter, "Many samples.");
            for i in 0..20_000u64 {
                e.sample("x", &[("vm", &format!("vm-{i}")), ("q", "a\"b")], i);
            }
        };
        let mut whole = Exposition::default();
        write(&mut whole);
        assert!(whole.out.len() > 3 * PIECE, "{}", whole.out.len());

        let mut pieces = Vec::new();
        let mut e = Exposition::to(&mut pieces);
        write(&mut e);
        assert!(e.out.len() < PIECE, "not handed over as it went");
        e.finish().unwrap();
        assert_eq!(String::from_utf8(pieces).unwrap(), whole.out);
    }

    #[test]
    fn a_failing_sink_is_reported() {
        struct Full;
        impl std::io::Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut sink = Full;
        let mut e = Exposition::to(&mut sink);
        e.sample("x", &[], 1u64);
        let error = e.finish().unwrap_err();
        assert_eq!(error.to_string(), "disk full");
    }

    #[test]
    fn labels_are_escaped_and_values_formatted() {
        let mut e = Exposition::default();
        e.family("x", Kind::Gauge, "Help with \\ and\nnewline.");
        e.sample("x", &[("a", "q\"uo\\te\nd")], 0.25);
        e.sample("x", &[], f64::NAN);
        e.sample("x", &[], f64::INFINITY);
        e.sample("x", &[], 1u64 << 40);
        assert_eq!(
            e.out,
            "# HELP x Help with \\\\ and\\nnewline.\n# TYPE x gauge\nx{a=\"q\\\"uo\\\\te\\nd\"} 0.25\nx NaN\nx +Inf\nx 1099511627776\n"
        );
    }
}
