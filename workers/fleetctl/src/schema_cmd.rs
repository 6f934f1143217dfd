//! `fleetctl schema list` and `fleetctl schema export --out DIR`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use fleet_protocol::registry::SPECS;

/// Prints every type, its part and its upstream schema file.
pub fn list() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<28} {:<4} UPSTREAM", "TYPE", "PART")?;
    for entry in SPECS {
        let upstream = match (entry.upstream_file, entry.zod_export) {
            (Some(file), _) => file.to_owned(),
            (None, Some((module, export))) => format!("(no JSON Schema; Zod {module}.{export})"),
            (None, None) => "(contract data; no upstream schema)".to_owned(),
        };
        writeln!(out, "{:<28} {:<4} {upstream}", entry.name, entry.part)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `<out>/<Type>.json` for every type.
pub fn export(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for entry in SPECS {
        let path = out.join(format!("{}.json", entry.name));
        let text = serde_json::to_string_pretty(&entry.json_schema())?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!("wrote {} schemas to {}", SPECS.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
