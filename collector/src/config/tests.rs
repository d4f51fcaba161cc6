use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn parse(source: &str) -> Result<Config, ConfigError> {
    Config::from_toml(source, Path::new("/etc/rally/collector.toml"))
}

fn invalid_parts(err: ConfigError) -> (Option<usize>, Option<String>, String) {
    match err {
        ConfigError::Invalid {
            line, key, message, ..
        } => (line, key, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.listen.grpc, "127.0.0.1:9470".parse().unwrap());
    assert_eq!(config.listen.http, "127.0.0.1:9471".parse().unwrap());
    assert_eq!(config.tls, None);
    assert!(!config.auth.allow_plaintext_tokens);
    assert_eq!(config.ingest.stale_after, Duration::from_secs(20));
    assert_eq!(config.ingest.forget_after, Duration::from_secs(86_400));
    assert_eq!(config.ingest.unknown_vms, UnknownVms::Ungrouped);
    assert_eq!(config.ingest.max_message_bytes, 262_144);
    assert_eq!(config.ingest.max_streams, 10_000);
    assert_eq!(config.ingest.hello_timeout, Duration::from_secs(10));
    assert_eq!(config.state.dir, PathBuf::from("/var/lib/rally"));
    assert_eq!(config.auth.mode, AuthMode::None);
    assert!(config.groups.is_empty());
    assert_eq!(config, Config::default());
}

#[test]
fn full_file_parses() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("web-1");
    std::fs::write(&token, "s3cret-web-1\n").unwrap();
    let source = format!(
        r#"
[listen]
grpc = "127.0.0.1:19470"
http = "127.0.0.1:19471"

[ingest]
stale_after = "30s"
forget_after = "12h"
unknown_vms = "reject"
max_message_bytes = 65536
max_streams = 50

[state]
dir = "/tmp/rally"

[auth]
mode = "token"
[[auth.tokens]]
vm = "web-1"
file = "{}"

[[groups]]
name = "web"
vms = ["web-1", "web-2"]

[[groups]]
name = "db"
vms = ["db-1"]
"#,
        token.display()
    );
    let config = parse(&source).unwrap();
    assert_eq!(config.listen.grpc, "127.0.0.1:19470".parse().unwrap());
    assert_eq!(config.ingest.stale_after, Duration::from_secs(30));
    assert_eq!(config.ingest.forget_after, Duration::from_secs(12 * 3600));
    assert_eq!(config.ingest.unknown_vms, UnknownVms::Reject);
    assert_eq!(config.ingest.max_message_bytes, 65_536);
    assert_eq!(config.ingest.max_streams, 50);
    assert_eq!(config.state.dir, PathBuf::from("/tmp/rally"));
    assert_eq!(config.auth.mode, AuthMode::Token);
    assert_eq!(config.auth.tokens[0].vm, "web-1");
    assert_eq!(config.groups.len(), 2);
    assert_eq!(config.group_of("web-2").unwrap().name, "web");
    assert_eq!(config.group_of("db-1").unwrap().name, "db");
    assert!(config.group_of("cache-1").is_none());
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let err = parse("[listen]\ngrpc = \"0.0.0.0:9470\"\n\n[ingest]\nstale_afterr = \"5s\"\n")
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("/etc/rally/collector.toml:5:"),
        "file and line missing: {text}"
    );
    assert!(text.contains("stale_afterr"), "key missing: {text}");
    let (line, key, message) = invalid_parts(err);
    assert_eq!(line, Some(5));
    assert_eq!(key.as_deref(), Some("ingest.stale_afterr"));
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn unknown_section_names_its_key() {
    let (line, key, _) = invalid_parts(parse("\n[metrics]\nport = 1\n").unwrap_err());
    assert_eq!(line, Some(2));
    assert_eq!(key.as_deref(), Some("metrics"));
}

#[test]
fn bad_duration_names_its_key() {
    let (line, key, _) = invalid_parts(
        parse("[ingest]\nforget_after = \"1d\"\nstale_after = \"soon\"\n").unwrap_err(),
    );
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("ingest.stale_after"));
}

#[test]
fn bad_enum_value_names_its_key() {
    let (line, key, _) = invalid_parts(parse("[ingest]\nunknown_vms = \"drop\"\n").unwrap_err());
    assert_eq!(line, Some(2));
    assert_eq!(key.as_deref(), Some("ingest.unknown_vms"));
}

#[test]
fn syntax_error_names_line() {
    let (line, _, _) = invalid_parts(parse("[listen]\ngrpc = \n").unwrap_err());
    assert_eq!(line, Some(2));
}

#[test]
fn vm_in_two_groups_is_refused_at_its_line() {
    let source = "[[groups]]\nname = \"web\"\nvms = [\"a\", \"b\"]\n\n[[groups]]\nname = \"app\"\nvms = [\"c\",\n  \"a\"]\n";
    let err = parse(source).unwrap_err();
    let text = err.to_string();
    let (line, key, message) = invalid_parts(err);
    assert_eq!(key.as_deref(), Some("groups[1].vms[1]"), "{text}");
    assert_eq!(line, Some(8), "{text}");
    assert!(message.contains("already in group `web`"), "{message}");
}

#[test]
fn reserved_and_invalid_group_names_are_refused() {
    let (_, key, _) =
        invalid_parts(parse("[[groups]]\nname = \"ungrouped\"\nvms = []\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("groups[0].name"));
    let (_, key, _) = invalid_parts(parse("[[groups]]\nname = \"we b\"\nvms = []\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("groups[0].name"));
}

#[test]
fn token_mode_needs_readable_token_files() {
    let (_, key, _) = invalid_parts(parse("[auth]\nmode = \"token\"\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("auth.mode"));

    let source = "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"web-1\"\nfile = \"/nonexistent/rally-token\"\n";
    let err = parse(source).unwrap_err();
    let text = err.to_string();
    let (line, key, message) = invalid_parts(err);
    assert_eq!(key.as_deref(), Some("auth.tokens[0].file"), "{text}");
    assert_eq!(line, Some(5), "{text}");
    assert!(message.contains("/nonexistent/rally-token"), "{message}");
}

#[test]
fn shared_or_empty_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let empty = dir.path().join("empty");
    std::fs::write(&a, "same").unwrap();
    std::fs::write(&b, "same\n").unwrap();
    std::fs::write(&empty, " \n").unwrap();
    let source = format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"a\"\nfile = \"{}\"\n[[auth.tokens]]\nvm = \"b\"\nfile = \"{}\"\n",
        a.display(),
        b.display()
    );
    let (_, key, message) = invalid_parts(parse(&source).unwrap_err());
    assert_eq!(key.as_deref(), Some("auth.tokens[1].file"));
    assert!(message.contains("same token"), "{message}");

    let source = format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"a\"\nfile = \"{}\"\n",
        empty.display()
    );
    let (_, _, message) = invalid_parts(parse(&source).unwrap_err());
    assert!(message.contains("empty"), "{message}");
}

#[test]
fn limits_are_checked() {
    let (_, key, _) = invalid_parts(parse("[ingest]\nmax_streams = 0\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("ingest.max_streams"));
    for (toml, expected) in [
        (
            "[ingest]\nmax_streams_per_vm = 0\n",
            "ingest.max_streams_per_vm",
        ),
        ("[listen]\nmax_connections = 0\n", "listen.max_connections"),
        (
            "[listen]\nhandshake_timeout = \"0s\"\n",
            "listen.handshake_timeout",
        ),
        ("[listen]\nidle_timeout = \"0s\"\n", "listen.idle_timeout"),
    ] {
        let (_, key, _) = invalid_parts(parse(toml).unwrap_err());
        assert_eq!(key.as_deref(), Some(expected), "{toml}");
    }
    let (_, key, _) = invalid_parts(
        parse("[ingest]\nstale_after = \"1h\"\nforget_after = \"1m\"\n").unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("ingest.forget_after"));
    let (_, key, _) =
        invalid_parts(parse("[listen]\ngrpc = \"0.0.0.0:1\"\nhttp = \"0.0.0.0:1\"\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("listen.http"));
}

const LADDER: &str = "ladder = [\n  { name = \"S\", vcpus = 1, memory_bytes = 2147483648 },\n  { name = \"M\", vcpus = 2, memory_bytes = 4294967296 },\n]\n";

#[test]
fn groups_carry_their_policy_and_dry_run_is_the_default() {
    let config = parse(&format!(
        "[[groups]]\nname = \"web\"\nvms = [\"web-1\"]\n{LADDER}max_rung = \"M\"\n[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 0.9\nfor = \"30s\"\n[groups.scale_down]\nlookback = \"1h\"\n"
    ))
    .unwrap();
    assert!(config.dry_run, "the built-in default must be dry-run");
    assert!(config.actuator.is_none());
    let web = &config.groups[0];
    assert!(web.resizes());
    assert!(web.effective_dry_run(config.dry_run));
    let policy = web;
    assert_eq!(policy.rules[0].hold_for, Duration::from_secs(30));
    assert_eq!(policy.scale_down.lookback, Duration::from_secs(3600));
    assert_eq!(policy.targets, rally_policy::group::default_targets());
    policy.compile().unwrap();
    assert_eq!(config.engine.tick, Duration::from_secs(5));
    // A group without a ladder is monitored only.
    assert!(!parse("[[groups]]\nname = \"db\"\n").unwrap().groups[0].resizes());
}

#[test]
fn policy_errors_name_the_group_key_and_line() {
    let cases = [
        (format!("{LADDER}min_rung = \"XL\"\n"), "groups[0].min_rung", 7),
        (format!("{LADDER}min_rung = \"M\"\nmax_rung = \"S\"\n"), "groups[0].min_rung", 7),
        (
            "ladder = [\n  { name = \"M\", vcpus = 2, memory_bytes = 4294967296 },\n  { name = \"S\", vcpus = 1, memory_bytes = 2147483648 },\n]\n".to_string(),
            "groups[0].ladder",
            3,
        ),
        (
            format!("{LADDER}[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 0.5\nclear = 0.9\n"),
            "groups[0].rules[0]",
            7,
        ),
        (
            format!("{LADDER}[groups.scale_down]\ncpu_ceiling = 2.0\n"),
            "groups[0].scale_down.cpu_ceiling",
            8,
        ),
        // A ratio's threshold outside 0..=1 could never fire.
        (
            format!("{LADDER}[[groups.rules]]\nmetric = \"cpu_utilization\"\nthreshold = 1.5\n"),
            "groups[0].rules[0].threshold",
            9,
        ),
        (
            format!("{LADDER}[[groups.targets]]\nmetric = \"cpu_utilization\"\ntarget = 1.2\n"),
            "groups[0].targets[0].target",
            9,
        ),
    ];
    for (policy, want_key, want_line) in cases {
        let source = format!("[[groups]]\nname = \"web\"\n{policy}");
        let err = parse(&source).unwrap_err();
        let text = err.to_string();
        let (line, key, _) = invalid_parts(err);
        assert_eq!(key.as_deref(), Some(want_key), "{text}\n{source}");
        assert_eq!(line, Some(want_line), "{text}\n{source}");
    }
    let (line, key, _) = invalid_parts(
        parse(&format!(
            "[[groups]]\nname = \"web\"\n{LADDER}surprise = 1\n"
        ))
        .unwrap_err(),
    );
    assert_eq!(
        (line, key.as_deref()),
        (Some(7), Some("groups[0].surprise"))
    );
}

#[test]
fn live_groups_need_an_actuator() {
    let (_, key, message) = invalid_parts(
        parse(&format!(
            "dry_run = false\n[[groups]]\nname = \"web\"\n{LADDER}"
        ))
        .unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("dry_run"));
    assert!(message.contains("[actuator]"), "{message}");
    let (line, key, _) = invalid_parts(
        parse(&format!(
            "[[groups]]\nname = \"web\"\n{LADDER}dry_run = false\n"
        ))
        .unwrap_err(),
    );
    assert_eq!((line, key.as_deref()), (Some(7), Some("groups[0].dry_run")));
    let ok = parse(&format!(
        "dry_run = false\n[actuator]\nkind = \"log\"\n[[groups]]\nname = \"web\"\n{LADDER}"
    ))
    .unwrap();
    assert!(!ok.groups[0].effective_dry_run(ok.dry_run));
    let (_, key, _) = invalid_parts(
        parse("[actuator]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_file = \"/nonexistent/secret\"\n").unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("actuator.secret_file"));
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "k\n").unwrap();
    let (_, key, message) = invalid_parts(
        parse(&format!(
            "[actuator]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_file = \"{}\"\nmax_attempts = 0\n",
            secret.path().display()
        ))
        .unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("actuator.max_attempts"), "{message}");
    assert!(!message.contains("url"), "{message}");
    let (_, key, _) =
        invalid_parts(parse("[api]\ntoken_file = \"/nonexistent/token\"\n").unwrap_err());
    assert_eq!(key.as_deref(), Some("api.token_file"));
}

/// The packaged `/etc/rally/collector.toml`.
const SHIPPED: &str = include_str!("../../../packaging/collector/collector.toml");

/// Commented-out example lines made live: one leading `#` removed from each line.
fn uncomment(block: &str) -> String {
    block
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_file_parses_and_is_the_built_in_defaults() {
    let config = parse(SHIPPED).unwrap();
    assert_eq!(config, Config::default());
    assert!(config.dry_run, "the shipped mode is dry-run");
}

#[test]
fn shipped_examples_are_valid_when_uncommented() {
    let groups = SHIPPED
        .find("#[[groups]]")
        .map(|i| uncomment(&SHIPPED[i..]))
        .unwrap();
    let config = parse(&groups).unwrap();
    let names: Vec<_> = config.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    assert!(!config.groups[0].resizes());
    let web = &config.groups[1];
    let compiled = web.compile().unwrap();
    // Every key but the ladder and its bounds is written with its default.
    let defaults = GroupPolicy::with_ladder(web.ladder.clone());
    assert_eq!(web.rules, defaults.rules);
    assert_eq!(web.scale_up, defaults.scale_up);
    assert_eq!(web.scale_down, defaults.scale_down);
    assert_eq!(
        (
            web.timezone,
            web.warm_up,
            web.circuit_breaker,
            web.allow_restart
        ),
        (
            defaults.timezone,
            defaults.warm_up,
            defaults.circuit_breaker,
            defaults.allow_restart
        )
    );
    assert_eq!(web.targets.len(), 1);
    assert_eq!(web.targets[0].metric, defaults.targets[0].metric);
    assert_eq!(
        web.targets[0].target_value(),
        defaults.targets[0].target_value()
    );
    assert_eq!(web.boosts.len(), 1);
    drop(compiled);

    let api = SHIPPED.find("#[api]").map(|i| &SHIPPED[i..]).unwrap();
    let api = uncomment(&api[..api.find("\n\n").unwrap()]);
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "api-token\n").unwrap();
    let api = api.replace("/etc/rally/api.token", &token.path().display().to_string());
    assert_eq!(
        parse(&api).unwrap().api.token_file.as_deref(),
        Some(token.path())
    );

    // The [ha] example: its keys are the defaults but for the members, name and URL.
    let ha = SHIPPED.find("#[ha]").map(|i| &SHIPPED[i..]).unwrap();
    let ha = parse(&uncomment(&ha[..ha.find("\n\n").unwrap()]))
        .unwrap()
        .ha
        .unwrap();
    assert_eq!(ha.etcd.len(), 3);
    assert_eq!(ha.name.as_deref(), Some("collector-a"));
    assert_eq!(ha.lease_ttl, std::time::Duration::from_secs(10));
    assert_eq!(ha.prefix, "/rally");

    // The [tls] example, with files `pki` made.
    let pki = tempfile::tempdir().unwrap();
    crate::pki::create_ca(pki.path(), "Rally CA", 10, false).unwrap();
    crate::pki::create_server(pki.path(), &["localhost".into()], 10, false).unwrap();
    let tls = SHIPPED.find("#[tls]").map(|i| &SHIPPED[i..]).unwrap();
    let tls = uncomment(&tls[..tls.find("\n\n").unwrap()])
        .replace("/etc/rally/pki", &pki.path().display().to_string());
    let tls = parse(&format!("[auth]\nmode = \"certificate\"\n{tls}"))
        .unwrap()
        .tls
        .unwrap();
    assert_eq!(tls.client_ca_file, Some(pki.path().join("ca.pem")));

    // Each [actuator] example is an actuator of its kind.
    let blocks: Vec<&str> = SHIPPED.split("#[actuator]\n").skip(1).collect();
    assert_eq!(blocks.len(), 3, "webhook, command and log examples");
    for (block, kind) in blocks.iter().zip(["webhook", "command", "log"]) {
        let body: String = block
            .lines()
            .take_while(|l| l.starts_with('#') && *l != "#")
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let actuator: ActuatorConfig =
            toml::from_str(&body).unwrap_or_else(|e| panic!("{kind} example:\n{body}\n{e}"));
        let shown = format!("{actuator:?}").to_lowercase();
        assert!(shown.starts_with(kind), "{kind}: {shown}");
    }
}

#[test]
fn tls_files_and_certificate_auth_are_checked() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path().display();
    crate::pki::create_ca(pki.path(), "Rally CA", 10, false).unwrap();
    crate::pki::create_server(pki.path(), &["localhost".into()], 10, false).unwrap();
    let tls = format!("[tls]\ncert_file = \"{dir}/server.pem\"\nkey_file = \"{dir}/server.key\"\n");
    parse(&tls).unwrap();
    let (_, key, message) = invalid_parts(
        parse(&format!(
            "[tls]\ncert_file = \"{dir}/server.pem\"\nkey_file = \"{dir}/ca.key\"\n"
        ))
        .unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("tls.key_file"), "{message}");
    assert!(
        message.contains("does not go with tls.cert_file"),
        "{message}"
    );
    let (_, key, _) = invalid_parts(
        parse("[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n")
            .unwrap_err(),
    );
    assert_eq!(key.as_deref(), Some("tls.cert_file"));
    // Certificates identify agents only when they are asked for.
    let (_, key, message) =
        invalid_parts(parse(&format!("[auth]\nmode = \"certificate\"\n{tls}")).unwrap_err());
    assert_eq!(key.as_deref(), Some("auth.mode"));
    assert!(message.contains("client_ca_file"), "{message}");
    parse(&format!(
        "[auth]\nmode = \"certificate\"\n{tls}client_ca_file = \"{dir}/ca.pem\"\n"
    ))
    .unwrap();
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/collector.toml")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/collector.toml"),
        "{err}"
    );
}

/// A crash of the `collector_config` fuzz target (`fuzz/regressions/collector_config/`):
/// an Oktawave rung after a rung of `u32::MAX` vCPUs (or `u64::MAX` bytes) overflowed
/// its stand-in size.
#[test]
fn an_oktawave_rung_after_the_largest_size_does_not_overflow() {
    let source = |memory_bytes: u64| {
        format!(
            r#"
[[groups]]
name = "web"
vms = ["web-1"]
ladder = [
  {{ name = "M", vcpus = 4294967295, memory_bytes = {memory_bytes} }},
  {{ name = "L", oktawave_type = 1048 }},
]

[actuator]
kind = "oktawave"
data_center = "pl1"
client_id = "rally"
client_secret_file = "/nonexistent/oktawave-client-secret"
username = "ops@shop.example"
password_file = "/nonexistent/oktawave-password"
[actuator.instances]
web-1 = 123456
"#
        )
    };
    // The ladder passes its check; the missing secret file is what is refused.
    let (_, key, message) = invalid_parts(parse(&source(1 << 30)).unwrap_err());
    assert_eq!(
        key.as_deref(),
        Some("actuator.client_secret_file"),
        "{message}"
    );
    // Nothing can be larger than the largest size: the ladder does not grow.
    let (_, key, message) = invalid_parts(parse(&source(u64::MAX)).unwrap_err());
    assert_eq!(key.as_deref(), Some("groups[0].ladder"), "{message}");
}

#[test]
fn ha_keys_are_checked_and_located() {
    let ok = parse("[ha]\netcd = [\"http://10.0.0.11:2379\"]\n").unwrap();
    let ha = ok.ha.unwrap();
    assert_eq!(
        (ha.lease_ttl, ha.etcd_timeout, ha.prefix.as_str()),
        (Duration::from_secs(10), Duration::from_secs(2), "/rally")
    );
    for (source, key, words) in [
        ("etcd = []", "ha.etcd", "at least one"),
        ("etcd = [\"10.0.0.11:2379\"]", "ha.etcd[0]", "not an http"),
        (
            "etcd = [\"http://a:2379\"]\nlease_ttl = \"1s\"",
            "ha.lease_ttl",
            "at least 2s",
        ),
        (
            "etcd = [\"http://a:2379\"]\nlease_ttl = \"2500ms\"",
            "ha.lease_ttl",
            "whole seconds",
        ),
        (
            "etcd = [\"http://a:2379\"]\nlease_ttl = \"3s\"\netcd_timeout = \"2s\"",
            "ha.etcd_timeout",
            "half of ha.lease_ttl",
        ),
        (
            "etcd = [\"http://a:2379\"]\nprefix = \"rally/\"",
            "ha.prefix",
            "start with /",
        ),
        (
            "etcd = [\"http://a:2379\"]\nname = \"\"",
            "ha.name",
            "empty",
        ),
        (
            "etcd = [\"https://a:2379\"]",
            "ha.etcd[0]",
            "set ha.etcd_ca_file",
        ),
        (
            "etcd = [\"http://a:2379\"]\netcd_ca_file = \"/etc/hosts\"",
            "ha.etcd[0]",
            "use https://",
        ),
        (
            "etcd = [\"https://a:2379\"]\netcd_ca_file = \"/nonexistent/ca.pem\"",
            "ha.etcd_ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            "etcd = [\"https://a:2379\"]\netcd_ca_file = \"/etc/hosts\"\netcd_cert_file = \"/etc/hosts\"",
            "ha.etcd_key_file",
            "needs its key",
        ),
    ] {
        let (line, found, message) =
            invalid_parts(parse(&format!("[ha]\n{source}\n")).unwrap_err());
        assert_eq!(found.as_deref(), Some(key), "{source}: {message}");
        assert!(line.is_some(), "{source}: located");
        assert!(message.contains(words), "{source}: {message}");
    }
    let unknown = parse("[ha]\netcd = [\"http://a:2379\"]\nttl = \"5s\"\n").unwrap_err();
    assert!(unknown.to_string().contains("ttl"), "{unknown}");
}
