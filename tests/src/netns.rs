//! A test host of its own: a network namespace joined to this machine by a veth pair,
//! so that a process inside it reaches a collector here from a non-loopback address
//! (`10.213.N.2` → `10.213.N.1`). Only these two addresses, on a link the test made,
//! ever carry traffic. Needs root and `ip` (iproute2); a missing one fails the test.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::tool;

/// A network namespace with a veth link to this machine; removed when dropped.
pub struct Netns {
    name: String,
    /// This machine's end of the link.
    pub host_addr: Ipv4Addr,
    /// The namespace's end of the link.
    pub ns_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let ip = tool::require("ip", "iproute2");
    let out = Command::new(&ip).args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates the namespace `rally-<tag>-<pid>` and its link (a /30 chosen from the
    /// process id, so that concurrent test processes do not collide).
    pub fn create(tag: &str) -> Netns {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (network namespaces): run it as scripts/test does in CI"
        );
        let pid = std::process::id();
        let n = (pid % 250) as u8;
        let name = format!("rally-{tag}-{pid}");
        let host_veth = format!("rh{pid}");
        let ns_veth = format!("rn{pid}");
        let host_addr = Ipv4Addr::new(10, 213, n, 1);
        let ns_addr = Ipv4Addr::new(10, 213, n, 2);
        ip(&["netns", "add", &name]);
        let netns = Netns {
            name,
            host_addr,
            ns_addr,
        };
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth,
        ]);
        ip(&["link", "set", &ns_veth, "netns", &netns.name]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_veth]);
        ip(&["link", "set", &host_veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_addr}/30"), "dev", &ns_veth]);
        inside(&["link", "set", &ns_veth, "up"]);
        inside(&["link", "set", "lo", "up"]);
        netns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(tool::require("ip", "iproute2"));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
