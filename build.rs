//! Compiles `proto/telehub/v1/telehub.proto` (and the nodes' own
//! `proto/telehub/cluster/v1/cluster.proto`) with protox (pure Rust, no system
//! `protoc`), generates prost types and pbjson serde impls for the JSON mapping,
//! and lists the dashboard's files (`dashboards/`) for the hub to embed.

use std::{
    env,
    error::Error,
    fmt::Write as _,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

/// File types the hub serves from `dashboards/`; everything else there (the npm
/// manifest and lockfile, the vendoring script, node_modules) is build input only.
const SERVED: &[&str] = &[
    "html",
    "js",
    "css",
    "svg",
    "png",
    "ico",
    "txt",
    "webmanifest",
];

fn main() -> Result<(), Box<dyn Error>> {
    dashboard_assets()?;

    let proto = "proto/telehub/v1/telehub.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile([proto], ["proto"])?;
    let descriptor_path = out.join("telehub_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .file_descriptor_set_path(&descriptor_path)
        // Maps (tags) as BTreeMap: encodings and JSON list keys in one stable order,
        // so the same tags always encode to the same bytes.
        .btree_map(["."])
        .compile_fds(descriptors)?;

    let set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .btree_map(["."])
        .build(&[".telehub.v1"])?;

    // The nodes' own protocol, compiled apart: it is not part of the wire
    // contract's descriptor set. `bytes` fields as `Bytes`, so a forwarded
    // envelope is a slice of the received frame, not a copy.
    let cluster = "proto/telehub/cluster/v1/cluster.proto";
    println!("cargo:rerun-if-changed={cluster}");
    prost_build::Config::new()
        .btree_map(["."])
        .bytes(["."])
        .compile_fds(protox::compile([cluster], ["proto"])?)?;
    Ok(())
}

/// Writes `dashboard_assets.rs`: one `Asset` per served file under `dashboards/`,
/// embedded with `include_bytes!`, with an ETag from its content.
fn dashboard_assets() -> Result<(), Box<dyn Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    // Not the directory itself: cargo would scan it whole, node_modules included,
    // which `npm ci` recreates on every CI run, and rebuild the crate each time.
    // Every embedded file and subdirectory instead; a new file at the top is always
    // referenced by a changed one (index.html or a module importing it).
    println!("cargo:rerun-if-changed=dashboards/index.html");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    let mut out = String::from("&[\n");
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let rel = file
            .strip_prefix(&root)?
            .to_string_lossy()
            .replace('\\', "/");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(&file)?.hash(&mut hasher);
        writeln!(
            out,
            "    Asset {{ path: {:?}, body: include_bytes!({:?}), etag: \"\\\"{:016x}\\\"\" }},",
            format!("/{rel}"),
            file.to_string_lossy(),
            hasher.finish()
        )?;
    }
    out.push(']');
    std::fs::write(
        PathBuf::from(env::var("OUT_DIR")?).join("dashboard_assets.rs"),
        out,
    )?;
    Ok(())
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Symlinks are not followed (no loops, nothing from outside the tree).
        let kind = entry.file_type()?;
        if name.starts_with('.') || name == "node_modules" || kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| SERVED.contains(&e))
        {
            files.push(path);
        }
    }
    Ok(())
}
