//! VM ids and group names: the one rule for what they may contain, and the name of the
//! group of VMs that no `[[groups]]` entry names. The configuration, the ingest edge and
//! the fleet all check ids with it; it imports nothing else of the crate.

/// The group of VMs that no `[[groups]]` entry names.
pub const UNGROUPED: &str = "ungrouped";
/// The longest VM id or group name accepted (a DNS name's limit).
pub const MAX_ID_LEN: usize = 253;
/// Checks a VM id or group name: 1..=253 characters of `A-Z a-z 0-9 . _ : -`, starting
/// with a letter or digit (so it is safe in a label, a URL and a log line).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "is {} characters long, at most {MAX_ID_LEN} are allowed",
            id.len()
        ));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{id:?} must start with a letter or a digit"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "{id:?} contains {c:?}; only letters, digits, '.', '_', ':' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("web-1").is_ok());
        assert!(validate_id("db.primary:0_a").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("-x").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id("a\u{0}").is_err());
        assert!(validate_id("ż").is_err());
        assert!(validate_id(&"a".repeat(254)).is_err());
    }
}
