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
#[derive(Debug, Default)]
pub(super) struct Exposition {
    pub(super) out: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Gauge,
    Counter,
}

impl Exposition {
    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
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
                for c in value.chars() {
                    match c {
                        '\\' => self.out.push_str(r"\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str(r"\n"),
                        c => self.out.push(c),
                    }
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
mod tests {
    use super::*;

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
