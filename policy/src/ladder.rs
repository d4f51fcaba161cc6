//! The ordered sizes a group's VMs may take (rungs), and the group's min/max rungs.

use serde::{Deserialize, Serialize};

/// One 128 MiB Linux memory block: the slack allowed between a requested memory size and
/// what the guest reports, because memory is hot-added (and onlined) in whole blocks.
pub const MEMORY_BLOCK_BYTES: u64 = 128 * 1024 * 1024;

/// Position of a rung in its ladder (0 = smallest).
pub type RungIndex = usize;

/// A VM size: what a resize request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// One named size on a group's ladder, as written in `collector.toml`.
///
/// With the Oktawave actuator a rung may name an Oktawave instance type instead of a
/// size (`{ name = "M", oktawave_type = "v1.standard-2.4" }` or `oktawave_type = 1047`):
/// the collector reads the type's vCPUs and RAM from Oktawave's API when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    /// Name used in config, decisions and the API (e.g. the cloud's instance class).
    pub name: String,
    /// Number of vCPUs at this rung (read from the type when `oktawave_type` is set).
    #[serde(default)]
    pub vcpus: u32,
    /// Memory at this rung, in bytes (read from the type when `oktawave_type` is set).
    #[serde(default)]
    pub memory_bytes: u64,
    /// The Oktawave instance type this rung is, by name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oktawave_type: Option<TypeRef>,
}

/// A cloud instance type named in a rung: its numeric id or its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TypeRef {
    /// The type's id (`1047`).
    Id(u32),
    /// The type's name (`"v1.standard-2.4"`), or its id written as a string.
    Name(String),
}

impl std::fmt::Display for TypeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypeRef::Id(id) => write!(f, "{id}"),
            TypeRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

impl Rung {
    /// The size this rung stands for.
    pub fn size(&self) -> Size {
        Size {
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
        }
    }
}

/// Why a ladder is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    /// The ladder has no rung at all.
    #[error("the ladder is empty")]
    Empty,
    /// A rung has zero vCPUs or zero memory.
    #[error("rung {0:?} has zero vcpus or zero memory_bytes")]
    ZeroSize(String),
    /// Two rungs share a name.
    #[error("rung name {0:?} appears twice")]
    DuplicateName(String),
    /// Rungs must grow: each is at least as large as the previous in both dimensions and
    /// larger in one.
    #[error("rung {next:?} is not larger than {prev:?} (rungs must be ordered smallest first)")]
    NotIncreasing {
        /// The earlier rung.
        prev: String,
        /// The rung that does not grow.
        next: String,
    },
    /// `min_rung` or `max_rung` names no rung.
    #[error("no rung named {0:?}")]
    UnknownRung(String),
    /// `min_rung` is above `max_rung`.
    #[error("min_rung {min:?} is above max_rung {max:?}")]
    MinAboveMax {
        /// The configured min rung.
        min: String,
        /// The configured max rung.
        max: String,
    },
}

/// A validated ladder with the group's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    rungs: Vec<Rung>,
    min: RungIndex,
    max: RungIndex,
}

impl Ladder {
    /// Validates `rungs` (smallest first) and resolves the min/max rung names (`None` =
    /// the ladder's ends).
    pub fn new(
        rungs: Vec<Rung>,
        min: Option<&str>,
        max: Option<&str>,
    ) -> Result<Self, LadderError> {
        if rungs.is_empty() {
            return Err(LadderError::Empty);
        }
        for (i, rung) in rungs.iter().enumerate() {
            if rung.vcpus == 0 || rung.memory_bytes == 0 {
                return Err(LadderError::ZeroSize(rung.name.clone()));
            }
            if rungs[..i].iter().any(|r| r.name == rung.name) {
                return Err(LadderError::DuplicateName(rung.name.clone()));
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &rungs[p]) {
                let grows = rung.vcpus >= prev.vcpus
                    && rung.memory_bytes >= prev.memory_bytes
                    && (rung.vcpus > prev.vcpus || rung.memory_bytes > prev.memory_bytes);
                if !grows {
                    return Err(LadderError::NotIncreasing {
                        prev: prev.name.clone(),
                        next: rung.name.clone(),
                    });
                }
            }
        }
        let find = |name: &str| {
            rungs
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| LadderError::UnknownRung(name.to_owned()))
        };
        let min = min.map(find).transpose()?.unwrap_or(0);
        let max = max.map(find).transpose()?.unwrap_or(rungs.len() - 1);
        if min > max {
            return Err(LadderError::MinAboveMax {
                min: rungs[min].name.clone(),
                max: rungs[max].name.clone(),
            });
        }
        Ok(Self { rungs, min, max })
    }

    /// All rungs, smallest first.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// The rung at `index`; indices come from this ladder, so out of range is a caller bug
    /// and clamps to the largest rung rather than panicking.
    pub fn rung(&self, index: RungIndex) -> &Rung {
        &self.rungs[index.min(self.rungs.len() - 1)]
    }

    /// Lowest rung the group may use.
    pub fn min(&self) -> RungIndex {
        self.min
    }

    /// Highest rung the group may use.
    pub fn max(&self) -> RungIndex {
        self.max
    }

    /// Index of the rung called `name`.
    pub fn index_of(&self, name: &str) -> Option<RungIndex> {
        self.rungs.iter().position(|r| r.name == name)
    }

    /// `index` clamped into `[min, max]`.
    pub fn clamp(&self, index: RungIndex) -> RungIndex {
        index.clamp(self.min, self.max)
    }

    /// The rung a VM reporting `vcpus` online CPUs and `memory_total_bytes` of MemTotal is
    /// on: same vCPU count, and MemTotal between 85 % of the rung's memory (the kernel
    /// keeps some for itself) and one memory block above it; the nearest such rung wins.
    /// `None` when the VM's size is not on the ladder (it is then never resized
    /// automatically).
    pub fn locate(&self, vcpus: u32, memory_total_bytes: u64) -> Option<RungIndex> {
        self.rungs
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.vcpus == vcpus
                    && memory_total_bytes <= r.memory_bytes.saturating_add(MEMORY_BLOCK_BYTES)
                    && memory_total_bytes as f64 >= r.memory_bytes as f64 * 0.85
            })
            .min_by_key(|(_, r)| r.memory_bytes.abs_diff(memory_total_bytes))
            .map(|(i, _)| i)
    }

    /// The largest rung above `from` that at most doubles `from`'s vCPUs and memory (the
    /// step limit), but always at least one rung up when one exists.
    pub fn step_limit(&self, from: RungIndex) -> RungIndex {
        let base = self.rung(from);
        let mut limit = (from + 1).min(self.rungs.len() - 1);
        for (i, r) in self.rungs.iter().enumerate().skip(from + 1) {
            if u64::from(r.vcpus) <= 2 * u64::from(base.vcpus)
                && r.memory_bytes <= base.memory_bytes.saturating_mul(2)
            {
                limit = i;
            }
        }
        limit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    pub(crate) fn rung(name: &str, vcpus: u32, gib: u64) -> Rung {
        Rung {
            name: name.into(),
            vcpus,
            memory_bytes: gib * GIB,
            oktawave_type: None,
        }
    }

    fn ladder() -> Ladder {
        Ladder::new(
            vec![
                rung("S", 1, 2),
                rung("M", 2, 4),
                rung("L", 4, 8),
                rung("XL", 8, 16),
                rung("XXL", 16, 64),
            ],
            Some("M"),
            Some("XL"),
        )
        .unwrap()
    }

    #[test]
    fn validation_rejects_bad_ladders() {
        type Case = (
            Vec<Rung>,
            Option<&'static str>,
            Option<&'static str>,
            LadderError,
        );
        let cases: Vec<Case> = vec![
            (vec![], None, None, LadderError::Empty),
            (
                vec![rung("S", 0, 2)],
                None,
                None,
                LadderError::ZeroSize("S".into()),
            ),
            (
                vec![rung("S", 1, 2), rung("S", 2, 4)],
                None,
                None,
                LadderError::DuplicateName("S".into()),
            ),
            (
                vec![rung("M", 2, 4), rung("S", 1, 2)],
                None,
                None,
                LadderError::NotIncreasing {
                    prev: "M".into(),
                    next: "S".into(),
                },
            ),
            (
                vec![rung("S", 1, 2), rung("S2", 1, 2)],
                None,
                None,
                LadderError::NotIncreasing {
                    prev: "S".into(),
                    next: "S2".into(),
                },
            ),
            (
                vec![rung("S", 1, 2)],
                Some("Q"),
                None,
                LadderError::UnknownRung("Q".into()),
            ),
            (
                vec![rung("S", 1, 2), rung("M", 2, 4)],
                Some("M"),
                Some("S"),
                LadderError::MinAboveMax {
                    min: "M".into(),
                    max: "S".into(),
                },
            ),
        ];
        for (rungs, min, max, want) in cases {
            assert_eq!(Ladder::new(rungs, min, max), Err(want));
        }
    }

    #[test]
    fn locate_matches_reported_size_to_a_rung() {
        let l = ladder();
        let mib = 1024 * 1024;
        // (vcpus, MemTotal, expected rung)
        let cases = [
            (2, 4 * GIB - 200 * mib, Some("M")), // kernel reservation
            (2, 4 * GIB, Some("M")),
            (4, 8 * GIB - 300 * mib, Some("L")),
            (2, 8 * GIB, None), // vCPUs of M, memory of L: off the ladder
            (3, 4 * GIB, None), // no rung has 3 vCPUs
            (2, 3 * GIB, None), // far too little memory
            (16, 63 * GIB, Some("XXL")),
        ];
        for (vcpus, mem, want) in cases {
            assert_eq!(
                l.locate(vcpus, mem).map(|i| l.rung(i).name.as_str()),
                want,
                "{vcpus} vcpus {mem} B"
            );
        }
    }

    #[test]
    fn step_limit_is_at_most_a_doubling_but_at_least_one_rung() {
        let l = ladder();
        // S(1,2) → M(2,4) doubles; L(4,8) would quadruple.
        assert_eq!(l.step_limit(0), 1);
        assert_eq!(l.step_limit(1), 2);
        // XL(8,16) → XXL(16,64) more than doubles memory, but one rung is always allowed.
        assert_eq!(l.step_limit(3), 4);
        assert_eq!(l.step_limit(4), 4);
    }

    #[test]
    fn clamp_keeps_inside_min_and_max() {
        let l = ladder();
        assert_eq!((l.min(), l.max()), (1, 3));
        assert_eq!(l.clamp(0), 1);
        assert_eq!(l.clamp(4), 3);
        assert_eq!(l.clamp(2), 2);
    }
}
