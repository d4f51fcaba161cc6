//! Compiles etcd's API definitions (`proto/`) with protox (pure Rust), so building
//! Rally never needs a system `protoc`; clients only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
