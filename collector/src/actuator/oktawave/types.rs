//! Resolving ladder rungs to Oktawave instance types: a rung naming `oktawave_type` takes
//! that type's vCPUs and RAM; a rung giving a size must match exactly one type. Works on
//! the rungs and members it is handed, so start-up wiring decides where they come from.

use std::collections::{BTreeMap, HashMap};

use tracing::info;

use super::model::InstanceType;
use rally_policy::ladder::{Ladder, Rung, TypeRef};

/// One resizing group's part in type resolution: its name, members and ladder (whose
/// rungs get Oktawave's sizes).
#[derive(Debug)]
pub struct GroupLadder<'a> {
    /// The group's name.
    pub group: &'a str,
    /// Its member VMs (each needs an Oktawave instance id).
    pub vms: &'a [String],
    /// Its rungs, smallest first.
    pub ladder: &'a mut [Rung],
}

/// Why a ladder cannot be resolved against Oktawave's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group `{group}`: {problem}")]
pub struct ResolveError {
    /// The group.
    pub group: String,
    /// What is wrong, naming the rung or VM.
    pub problem: String,
}

/// (group, rung name) → Oktawave type id.
pub type RungTypes = HashMap<(String, String), u32>;

/// Finds `wanted` among `types`: by id, by name, or by an id written as a string.
pub fn find_type<'a>(types: &'a [InstanceType], wanted: &TypeRef) -> Option<&'a InstanceType> {
    match wanted {
        TypeRef::Id(id) => types.iter().find(|t| t.id == *id),
        TypeRef::Name(name) => types.iter().find(|t| t.name == *name).or_else(|| {
            name.parse::<u32>()
                .ok()
                .and_then(|id| types.iter().find(|t| t.id == id))
        }),
    }
}

/// Resolves every group's rungs against `types`, writing Oktawave's sizes into rungs that
/// name a type, and checks every member has an id in `instances` and every ladder still
/// grows with the real sizes. Returns each rung's type id.
pub fn resolve(
    types: &[InstanceType],
    instances: &BTreeMap<String, u64>,
    groups: &mut [GroupLadder<'_>],
) -> Result<RungTypes, ResolveError> {
    let mut rung_types = RungTypes::new();
    for g in groups.iter_mut() {
        let fail = |problem: String| ResolveError {
            group: g.group.to_owned(),
            problem,
        };
        if let Some(vm) = g.vms.iter().find(|vm| !instances.contains_key(*vm)) {
            return Err(fail(format!(
                "VM `{vm}` has no Oktawave instance id in [actuator.instances]"
            )));
        }
        for rung in g.ladder.iter_mut() {
            let t = rung_type(types, rung).map_err(fail)?;
            info!(group = %g.group, rung = %rung.name, type_id = t.id, type_name = %t.name, vcpus = t.cpu, ram_mb = t.ram, "ladder rung resolved to an Oktawave instance type");
            rung_types.insert((g.group.to_owned(), rung.name.clone()), t.id);
        }
        if let Err(e) = Ladder::new(g.ladder.to_vec(), None, None) {
            return Err(fail(format!(
                "with Oktawave's sizes the ladder is invalid: {e}"
            )));
        }
    }
    Ok(rung_types)
}

/// The type `rung` stands for, after giving the rung that type's size if it names one.
fn rung_type<'a>(types: &'a [InstanceType], rung: &mut Rung) -> Result<&'a InstanceType, String> {
    let mb = |t: &InstanceType| t.ram.saturating_mul(1 << 20);
    if let Some(wanted) = &rung.oktawave_type {
        let t = find_type(types, wanted).ok_or_else(|| {
            format!(
                "rung `{}`: Oktawave has no instance type {wanted} ({} types listed)",
                rung.name,
                types.len()
            )
        })?;
        let given = (rung.vcpus, rung.memory_bytes);
        if given != (0, 0) && given != (t.cpu, mb(t)) {
            return Err(format!(
                "rung `{}`: gives {} vCPUs and {} bytes but type {wanted} has {} vCPUs and {} MB",
                rung.name, rung.vcpus, rung.memory_bytes, t.cpu, t.ram
            ));
        }
        (rung.vcpus, rung.memory_bytes) = (t.cpu, mb(t));
        return Ok(t);
    }
    let same: Vec<&InstanceType> = types
        .iter()
        .filter(|t| t.cpu == rung.vcpus && mb(t) == rung.memory_bytes)
        .collect();
    match same.as_slice() {
        [t] => Ok(*t),
        [] => Err(format!(
            "rung `{}`: no Oktawave instance type has {} vCPUs and {} bytes; name one with \
             oktawave_type",
            rung.name, rung.vcpus, rung.memory_bytes
        )),
        _ => Err(format!(
            "rung `{}`: several Oktawave types have this size; name one with oktawave_type",
            rung.name
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn types() -> Vec<InstanceType> {
        [
            (1047, "v1.standard-2.4", 2, 4096),
            (1048, "v1.standard-4.8", 4, 8192),
        ]
        .into_iter()
        .map(|(id, name, cpu, ram)| InstanceType {
            id,
            name: name.into(),
            cpu,
            ram,
        })
        .collect()
    }

    fn rung(name: &str, t: Option<TypeRef>, vcpus: u32, memory_bytes: u64) -> Rung {
        Rung {
            name: name.into(),
            vcpus,
            memory_bytes,
            oktawave_type: t,
        }
    }

    #[test]
    fn types_are_found_by_id_name_or_id_string() {
        let types = types();
        assert!(find_type(&types, &TypeRef::Id(1047)).is_some());
        assert!(find_type(&types, &TypeRef::Name("v1.standard-2.4".into())).is_some());
        assert!(find_type(&types, &TypeRef::Name("1047".into())).is_some());
        assert!(find_type(&types, &TypeRef::Name("v1.standard-8.16".into())).is_none());
    }

    #[test]
    fn rungs_take_the_sizes_of_their_types_and_members_need_ids() {
        let mut ladder = vec![
            rung("M", Some(TypeRef::Name("v1.standard-2.4".into())), 0, 0),
            rung("L", None, 4, 8192 << 20),
        ];
        let vms = vec!["web-1".to_owned()];
        let instances = BTreeMap::from([("web-1".to_owned(), 501)]);
        let mut groups = [GroupLadder {
            group: "web",
            vms: &vms,
            ladder: &mut ladder,
        }];
        let ids = resolve(&types(), &instances, &mut groups).unwrap();
        assert_eq!(ids[&("web".into(), "L".into())], 1048);
        assert_eq!((ladder[0].vcpus, ladder[0].memory_bytes), (2, 4096 << 20));

        let mut groups = [GroupLadder {
            group: "web",
            vms: &vms,
            ladder: &mut ladder,
        }];
        let err = resolve(&types(), &BTreeMap::new(), &mut groups).unwrap_err();
        assert!(
            err.to_string()
                .contains("VM `web-1` has no Oktawave instance id")
        );
    }

    #[test]
    fn a_ladder_that_shrinks_with_the_real_sizes_is_refused() {
        let mut ladder = vec![
            rung("M", Some(TypeRef::Id(1048)), 0, 0),
            rung("L", Some(TypeRef::Id(1047)), 0, 0),
        ];
        let mut groups = [GroupLadder {
            group: "web",
            vms: &[],
            ladder: &mut ladder,
        }];
        let err = resolve(&types(), &BTreeMap::new(), &mut groups).unwrap_err();
        assert!(err.to_string().contains("ladder is invalid"), "{err}");
    }
}
