//! The reduced chaos run inside `just test`: every scenario at [`Scale::reduced`], each its own
//! test (so cargo runs two at once on two cores), with the worker binaries `cargo test
//! --workspace` built beside this test's.

use std::path::PathBuf;

use fleet_chaos::{Scale, render, scenarios};

fn bins() -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_fleet-chaos"));
    let dir = me.parent().expect("target dir").to_owned();
    for worker in [
        "provisioner",
        "deployer",
        "installer",
        "quota-auditor",
        "fleetctl",
    ] {
        assert!(
            dir.join(worker).exists(),
            "{worker} is missing beside fleet-chaos: run `cargo test --workspace` (or `just test`)"
        );
    }
    dir
}

async fn scenario(name: &'static str) {
    let reports = fleet_chaos::run(&[name], &Scale::reduced(), &bins()).await;
    let table = render(&reports);
    println!("{table}");
    let report = &reports[0];
    assert!(
        report.passed() || report.skipped(),
        "chaos scenario {name} failed:\n{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_crashes() {
    scenario(scenarios::ALL[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart() {
    scenario(scenarios::ALL[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_replicas() {
    scenario(scenarios::ALL[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turso_faults() {
    scenario(scenarios::ALL[3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input() {
    scenario(scenarios::ALL[4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults() {
    scenario(scenarios::ALL[5]).await;
}
