//! `just bench [--tenants N] [--scale M]`: the fleet's hot paths measured against raw floors
//! run in the same process and the same hour, printed as ratios and written to
//! `bench/results/latest.json`. Nothing here is asserted: the targets are printed as met or
//! not. See `bench/README.md` for what each number means.
//!
//! 1. provisioning — N `tenant.created` at full speed through a local nats-server and the
//!    release provisioner → all active (tenants/s, register → active latency), then a fixed
//!    offered load at half that maximum; vs the same database work in a plain loop on every
//!    core, and vs the `sqlite3` shell applying the same SQL;
//! 2. fleet deploy — CRM v1, then v2 (new objects and fields, table rebuilds), to all N
//!    tenants in waves 1, 10 %, 100 %; vs the same migrations by hand and through the shell;
//! 3. the schema engine alone — a 50-object bundle planned and applied, introspection;
//! 4. memory — each worker's resident set idle and at its peak under load;
//! 5. scale — the fleet run again with M tenants (default 10 000; `--scale 0` skips it), then
//!    with N again; cost per tenant at M side by side with N's (the mean of N's two runs).

mod baseline;
mod fleet;
mod gateway;
mod scenarios;
mod sys;

use anyhow::Context;
use serde_json::{Value, json};

use crate::scenarios::round;

/// Command-line arguments.
#[derive(Debug)]
struct Args {
    tenants: usize,
    scale: usize,
    settle: u64,
    concurrency: usize,
    out: std::path::PathBuf,
    print: Option<std::path::PathBuf>,
    only: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        tenants: 2000,
        scale: 10_000,
        settle: 30,
        concurrency: baseline::SHIPPED_CONCURRENCY,
        print: None,
        only: None,
        out: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/latest.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--tenants" => args.tenants = value()?.parse()?,
            "--scale" => args.scale = value()?.parse()?,
            "--settle" => args.settle = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--print" => args.print = Some(value()?.into()),
            "--out" => args.out = value()?.into(),
            "--only" => args.only = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "just bench [--tenants N (2000)] [--scale M (10000; 0 skips)] [--concurrency C (16)] [--out FILE]\n\
                     just bench --only fleet|floors [--tenants N]: one side alone (the fleet's provisioning and deploys v1, v2; or the raw floors), its JSON on stdout, no results file (for profiling; no ratios)"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    anyhow::ensure!(args.tenants >= 20, "--tenants must be at least 20");
    anyhow::ensure!(
        (1..=1024).contains(&args.concurrency),
        "--concurrency must be 1-1024"
    );
    Ok(args)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// A target: the measured value, the goal, and whether it is met.
fn target(name: &str, value: f64, goal: &str, met: bool) -> Value {
    json!({"target": name, "value": round(value), "goal": goal, "met": met})
}

/// The fleet's allocator ([`fleet_allocator`]): the raw floors run the same SQLite work on the
/// same allocator as the workers. No [`fleet_allocator::init`]: the nats-server and `sqlite3`
/// processes the bench starts keep the host's huge-page setting, as in production (the
/// workers it starts call it themselves).
#[global_allocator]
static ALLOCATOR: fleet_allocator::Allocator = fleet_allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    // The floors run with the SQLite settings the workers run with.
    fleet_tenantdb::tune_sqlite();
    baseline::set_concurrency(args.concurrency);
    if let Some(path) = &args.print {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        print_table(&serde_json::from_str(&text)?);
        return Ok(());
    }
    let n = args.tenants;
    match args.only.as_deref() {
        None => {}
        Some("fleet") => {
            let (run, _fleet) = scenarios::fleet_run(n, false).await?;
            println!("{}", serde_json::to_string_pretty(&run)?);
            return Ok(());
        }
        Some("floors") => {
            let (floors, _files) = scenarios::baselines(n).await?;
            println!("{}", serde_json::to_string_pretty(&floors)?);
            return Ok(());
        }
        Some(other) => anyhow::bail!("--only {other:?}: fleet or floors"),
    }
    eprintln!(
        "bench: {n} tenants (scale run: {}), release build",
        args.scale
    );
    // The disk's background work of one phase (writeback, recently freed inodes that ext4
    // skips for 30 s when it allocates) is not charged to the next.
    let settle = || async {
        eprintln!("  settling {} s …", args.settle);
        tokio::time::sleep(std::time::Duration::from_secs(args.settle)).await;
    };
    eprintln!("  schema engine …");
    let engine = scenarios::engine().await?;
    settle().await;
    eprintln!("  raw floors for {n} tenants (before the fleet) …");
    let (floors_before, floor_files) = scenarios::baselines(n).await?;
    settle().await;
    eprintln!("  the fleet with {n} tenants …");
    let (run, fleet) = scenarios::fleet_run(n, true).await?;
    settle().await;
    eprintln!("  raw floors for {n} tenants (after the fleet) …");
    let (floors_after, floor_files_after) = scenarios::baselines(n).await?;
    let floors = scenarios::bracketed(&floors_before, &floors_after);
    // The scale run, then the N run again: N's cost per tenant in the comparison is the mean
    // of the runs before and after M's, as the floors are (the machine drifts over minutes).
    let (scale, scale_fleet, again) = if args.scale > 0 {
        settle().await;
        eprintln!("  the fleet with {} tenants …", args.scale);
        let (big, big_fleet) = scenarios::fleet_run(args.scale, false).await?;
        settle().await;
        eprintln!("  the fleet with {n} tenants again (after the scale run) …");
        let (again, again_fleet) = scenarios::fleet_run(n, false).await?;
        (Some(big), Some(big_fleet), Some((again, again_fleet)))
    } else {
        (None, None, None)
    };

    let p = &run["provisioning"];
    let prov_rate = f(&p["tenantsPerSecond"]);
    let prov_floor = f(&floors["provisioning"]["inProcess"]["tenantsPerSecond"]);
    let prov_shell = f(&floors["provisioning"]["sqlite3"]["tenantsPerSecond"]);
    let half_p99 = f(&p["halfLoad"]["latency"]["p99Ms"]);
    let mut targets = vec![
        target(
            "provisioning vs raw floor",
            prov_rate / prov_floor,
            "≥ 0.7×",
            prov_rate >= 0.7 * prov_floor,
        ),
        target(
            "p99 register → active at half of max load (ms)",
            half_p99,
            "≤ 50 ms",
            half_p99 <= 50.0,
        ),
    ];
    if prov_shell > 0.0 {
        targets.push(target(
            "provisioning vs sqlite3 loop",
            prov_rate / prov_shell,
            "≥ 3×",
            prov_rate >= 3.0 * prov_shell,
        ));
    }
    for version in ["v1", "v2"] {
        let rate = f(&run["deploy"][version]["tenantsPerSecond"]);
        let floor = f(&floors["deploy"][version]["inProcess"]["tenantsPerSecond"]);
        let shell = f(&floors["deploy"][version]["sqlite3"]["tenantsPerSecond"]);
        targets.push(target(
            &format!("deploy CRM {version} vs raw floor"),
            rate / floor,
            "≥ 0.8×",
            rate >= 0.8 * floor,
        ));
        if shell > 0.0 {
            targets.push(target(
                &format!("deploy CRM {version} vs sqlite3 loop"),
                rate / shell,
                "≥ 3×",
                rate >= 3.0 * shell,
            ));
        }
    }
    for worker in ["provisioner", "deployer"] {
        let idle = f(&run["memory"]["idle"][format!("{worker}MiB")]);
        targets.push(target(
            &format!("{worker} idle RSS (MiB)"),
            idle,
            "≤ 40 MB",
            idle * 1.048_576 <= 40.0,
        ));
    }
    // Cost per tenant: CPU (worker + server) and wall time, at N and at the scale run's M.
    let cost = |run: &Value, path: &str, worker: &str| {
        let v = &run[path];
        let (cpu, rate) = if path == "provisioning" {
            (&v["cpuMsPerTenant"], f(&v["tenantsPerSecond"]))
        } else {
            (&v["v2"]["cpuMsPerTenant"], f(&v["v2"]["tenantsPerSecond"]))
        };
        (
            f(&cpu[worker]) + f(&cpu["natsServer"]),
            1e3 / rate.max(f64::EPSILON),
        )
    };
    let mut scale_rows = Vec::new();
    if let (Some(big), Some((again, _))) = (&scale, &again) {
        for (path, worker) in [("provisioning", "provisioner"), ("deploy", "deployer")] {
            let (cpu_before, wall_before) = cost(&run, path, worker);
            let (cpu_after, wall_after) = cost(again, path, worker);
            let (cpu_n, wall_n) = (
                (cpu_before + cpu_after) / 2.0,
                (wall_before + wall_after) / 2.0,
            );
            let (cpu_m, wall_m) = cost(big, path, worker);
            scale_rows.push(json!({
                "path": path,
                "cpuMsPerTenant": {"at": [n, args.scale], "values": [round(cpu_n), round(cpu_m)], "ratio": round(cpu_m / cpu_n), "runsAtN": [round(cpu_before), round(cpu_after)]},
                "wallMsPerTenant": {"at": [n, args.scale], "values": [round(wall_n), round(wall_m)], "ratio": round(wall_m / wall_n), "runsAtN": [round(wall_before), round(wall_after)]},
            }));
            targets.push(target(
                &format!("{path}: CPU per tenant at {} vs {n}", args.scale),
                cpu_m / cpu_n,
                "≤ 1.2×",
                cpu_m <= 1.2 * cpu_n,
            ));
            targets.push(target(
                &format!("{path}: wall time per tenant at {} vs {n}", args.scale),
                wall_m / wall_n,
                "≤ 1.2×",
                wall_m <= 1.2 * wall_n,
            ));
        }
    }

    let results = json!({
        "generatedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": sys::machine(),
        "tenants": n,
        "scaleTenants": args.scale,
        "fleet": run,
        "floors": floors,
        "scaleRun": scale,
        "againRun": again.as_ref().map(|(run, _)| run),
        "scale": scale_rows,
        "engine": engine,
        "targets": targets,
    });
    print_table(&results);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwritten to {}", args.out.display());
    // Every scenario's files are removed only now (see `scenarios::fleet_run`).
    drop((floor_files, floor_files_after, fleet, scale_fleet, again));
    Ok(())
}

/// The baselines of one path, each with the fleet's rate as a ratio of it.
fn baseline_rows(floors: &Value, fleet: f64, what: &str) {
    let rows = [
        (
            "inProcess",
            format!(
                "  raw floor: {what}, plain loop, {} at once",
                floors["inProcess"]["concurrency"]
            ),
        ),
        (
            "inProcessPerCore",
            format!("  raw floor: {what}, one at a time per core"),
        ),
        (
            "sqlite3",
            format!(
                "  sqlite3 shell, same SQL, {} at once",
                baseline::concurrency()
            ),
        ),
    ];
    for (key, label) in rows {
        let rate = f(&floors[key]["tenantsPerSecond"]);
        if rate > 0.0 {
            // The two measurements bracketing the fleet's run (before / after), when there are.
            let runs = floors[key]["runs"]
                .as_array()
                .map(|runs| {
                    let rates: Vec<String> = runs
                        .iter()
                        .map(|r| format!("{:.0}", f(&r["tenantsPerSecond"])))
                        .collect();
                    format!("   ({})", rates.join(" / "))
                })
                .unwrap_or_default();
            println!("{label:<52} {rate:>12.1} {:>13.2}×{runs}", fleet / rate);
        }
    }
}

/// The machine's busy share (all cores, from `/proc/stat`) over the fleet's run and over its
/// floor's: how much of the two cores each kept busy. Results files from before it was
/// measured have none; nothing is printed then.
fn busy_line(fleet: &Value, floor: &Value) {
    if let (Some(fleet), Some(floor)) =
        (fleet["machineBusy"].as_f64(), floor["machineBusy"].as_f64())
    {
        println!(
            "  machine busy: {:.0} % through the fleet, {:.0} % in the raw floor's loop",
            fleet * 100.0,
            floor * 100.0
        );
    }
}

fn print_table(r: &Value) {
    let n = &r["tenants"];
    let run = &r["fleet"];
    let floors = &r["floors"];
    let m = &r["machine"];
    println!(
        "\nfleet bench — {} × {} ({} GiB, {}, {}), {n} tenants\n",
        m["cpus"],
        m["cpuModel"].as_str().unwrap_or("?"),
        m["memoryGiB"],
        m["filesystem"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let p = &run["provisioning"];
    println!(
        "{:<52} {:>12} {:>14}",
        "provisioning", "tenants/s", "fleet ÷ this"
    );
    println!(
        "{:<52} {:>12}",
        "  through the fleet (register → hook, full speed)", p["tenantsPerSecond"]
    );
    let fleet_rate = f(&p["tenantsPerSecond"]);
    baseline_rows(&floors["provisioning"], fleet_rate, "same work");
    println!(
        "  latency at full speed: p50 {} ms, p99 {} ms, max {} ms",
        p["latency"]["p50Ms"], p["latency"]["p99Ms"], p["latency"]["maxMs"]
    );
    println!(
        "  latency at {} tenants/s offered (half of max): p50 {} ms, p99 {} ms",
        p["halfLoad"]["offeredPerSecond"],
        p["halfLoad"]["latency"]["p50Ms"],
        p["halfLoad"]["latency"]["p99Ms"]
    );
    println!(
        "  CPU per tenant: provisioner {} ms, nats-server {} ms, the bench's client {} ms; the raw floor {} ms",
        p["cpuMsPerTenant"]["provisioner"],
        p["cpuMsPerTenant"]["natsServer"],
        p["cpuMsPerTenant"]["client"],
        floors["provisioning"]["inProcess"]["cpuMsPerTenant"]
    );
    busy_line(p, &floors["provisioning"]["inProcess"]);
    for version in ["v1", "v2"] {
        let d = &run["deploy"][version];
        println!(
            "\n{:<52} {:>12} {:>14}",
            format!("fleet deploy CRM {version} (waves 1, 10%, 100%)"),
            "tenants/s",
            "fleet ÷ this"
        );
        println!(
            "{:<52} {:>12}",
            "  through the fleet", d["tenantsPerSecond"]
        );
        baseline_rows(
            &floors["deploy"][version],
            f(&d["tenantsPerSecond"]),
            "same migration",
        );
        println!(
            "  CPU per tenant: deployer {} ms, nats-server {} ms; the raw floor {} ms; total {} s",
            d["cpuMsPerTenant"]["deployer"],
            d["cpuMsPerTenant"]["natsServer"],
            floors["deploy"][version]["inProcess"]["cpuMsPerTenant"],
            d["seconds"]
        );
        busy_line(d, &floors["deploy"][version]["inProcess"]);
    }
    let g = &run["gateway"];
    if g.is_object() {
        println!(
            "\n{:<52} {:>12} {:>14}",
            format!(
                "data gateway ({} requests, {} clients, {} tenants)",
                g["requests"], g["clients"], g["tenants"]
            ),
            "requests/s",
            "gateway ÷ this"
        );
        for (kind, what) in [("writes", "create + read back"), ("reads", "get by id")] {
            println!(
                "{:<52} {:>12}",
                format!("  {kind} through the gateway ({what})"),
                g[kind]["perSecond"]
            );
            println!(
                "{:<52} {:>12} {:>13}×",
                format!("  {kind}: the same statements in a plain libSQL loop"),
                g[kind]["rawPerSecond"],
                g[kind]["ratio"]
            );
        }
    }
    let e = &r["engine"];
    println!(
        "\nschema engine ({} objects, {} statements)",
        e["objects"], e["statements"]
    );
    println!(
        "  plan + apply {} ms vs raw DDL {} ms",
        e["planApplyMs"], e["rawDdlMs"]
    );
    println!(
        "  introspect {} ms (a catalog seen for the first time: {} ms) vs reading sqlite_schema {} ms; re-plan (no change) {} ms",
        e["introspectMs"], e["introspectFirstMs"], e["readSqliteSchemaMs"], e["replanUnchangedMs"]
    );
    println!(
        "  validate CRM bundle {} ms vs plain serde decode {} ms",
        e["validateBundleMs"], e["decodeBundleMs"]
    );
    let mem = &run["memory"];
    println!(
        "\nmemory (MiB): provisioner idle {} peak {}; deployer idle {} peak {}",
        mem["idle"]["provisionerMiB"],
        mem["peak"]["provisionerMiB"],
        mem["idle"]["deployerMiB"],
        mem["peak"]["deployerMiB"]
    );
    if let Some(rows) = r["scale"].as_array().filter(|rows| !rows.is_empty()) {
        println!(
            "\nscale: cost per tenant at {n} and at {} tenants",
            r["scaleTenants"]
        );
        // N's two runs (before / after the scale run), when the file has them.
        let runs = |v: &Value| match v["runsAtN"].as_array() {
            Some(runs) => format!(
                " ({})",
                runs.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
            None => String::new(),
        };
        for row in rows {
            let (cpu, wall) = (&row["cpuMsPerTenant"], &row["wallMsPerTenant"]);
            println!(
                "  {:<13} CPU {}{} → {} ms ({}×)   wall {}{} → {} ms ({}×)",
                row["path"].as_str().unwrap_or_default(),
                cpu["values"][0],
                runs(cpu),
                cpu["values"][1],
                cpu["ratio"],
                wall["values"][0],
                runs(wall),
                wall["values"][1],
                wall["ratio"],
            );
        }
    }
    println!("\ntargets");
    for t in r["targets"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<58} {:>9} (goal {})",
            if t["met"] == true { "met " } else { "MISS" },
            t["target"].as_str().unwrap_or_default(),
            t["value"],
            t["goal"].as_str().unwrap_or_default()
        );
    }
}
