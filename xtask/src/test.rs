//! `cargo xtask test`: the whole test suite, in the order a failure is
//! cheapest to see: set-up, formatting, clippy, the eBPF build, unit tests,
//! then the privileged integration tests on the real kernel.
//!
//! libtest's summaries are parsed and added up; tests that skipped
//! themselves (missing root, BPF or a kernel feature) leave a marker in
//! `$VMBW_SKIP_DIR` and are reported as skipped with their reason. Every
//! test run is first listed (`-- --list`): a listed test that no summary
//! accounts for (its binary crashed, or never ran) counts as failed, and
//! the privileged tests `--unprivileged` leaves out count as skipped, so
//! the tally always adds up to the list. Checks (fmt, clippy, the eBPF
//! build) are reported on a line of their own. The last line is
//! `N passed, N failed, N skipped`, tests only.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    no_setup: bool,
    /// Only the unprivileged part: checks and unit tests (the privileged
    /// tests are listed and counted as skipped).
    #[arg(long)]
    unprivileged: bool,
    /// Fail when any test was skipped (CI runs as root with everything
    /// installed, so a skip there means a missing install step).
    #[arg(long)]
    strict: bool,
    /// Run the privileged integration tests N times, each time with a busy
    /// loop on every core, and report the failures per test (a test that
    /// passes only on a quiet machine fails CI on a loaded one).
    #[arg(long, value_name = "N")]
    stress: Option<u32>,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Tests listed but accounted for by no summary.
    not_run: u64,
    /// Privileged tests left out by --unprivileged.
    left_out: u64,
    checks_passed: u64,
    failed_steps: Vec<String>,
    /// Names of the tests that failed.
    failed_tests: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // A one-shot run gains nothing from incremental state, which nearly
    // doubles target/ (CI's disk once ran out). Every cargo this run
    // starts (checks, fuzz, deb, tests, stress rounds) inherits it.
    // SAFETY: xtask is single-threaded here; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    if let Some(rounds) = args.stress {
        return stress(args, rounds);
    }
    let root = util::workspace_root();
    report_disk(&root);
    if !args.no_setup {
        setup::run(&setup::Args::default())?;
    }
    sweep_stale_namespaces();

    let mut tally = Tally::default();
    let cargo = || {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(&root);
        c
    };

    check(
        &mut tally,
        "formatting (cargo fmt --check)",
        cargo().args(["fmt", "--all", "--check"]),
    );
    check(
        &mut tally,
        "clippy (-D warnings)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    check(
        &mut tally,
        "eBPF build (agent/build.rs, bpfel-unknown-none)",
        cargo().args(["build", "--package", "vmbw"]),
    );
    util::step("fuzz targets, 30 s each from fuzz/seeds (cargo xtask fuzz)");
    match crate::fuzz::run_targets(crate::fuzz::TARGETS, 30) {
        Ok(outcomes) if outcomes.iter().all(|o| o.failure.is_none()) => tally.checks_passed += 1,
        Ok(_) => tally
            .failed_steps
            .push("fuzz targets: an input failed (see above)".into()),
        Err(e) => tally.failed_steps.push(format!("fuzz targets: {e:#}")),
    }
    let (custom, manifests): (Vec<_>, Vec<_>) = deploy_manifests(&root)?
        .into_iter()
        .partition(|p| is_custom_resource(p));
    for version in KUBERNETES_VERSIONS {
        check(
            &mut tally,
            &format!("deploy/base against Kubernetes {version} (kubernetes-validate --strict)"),
            Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .args(&manifests),
        );
    }

    custom_resources(&mut tally, &custom)?;

    check(
        &mut tally,
        "deploy/ against checkov (skips carry their reasons in the manifests)",
        Command::new(setup::checkov_bin()?)
            .args([
                "--framework",
                "kubernetes",
                "--compact",
                "--quiet",
                "--skip-download",
            ])
            .arg("-d")
            .arg(root.join("deploy")),
    );
    let rules = root.join("deploy/overlays/prometheus-operator/prometheusrule.yaml");
    let rules_dir = tempdir("vmbw-rules")?;
    let rule_file = rules_dir.join("rules.yaml");
    match fs::read_to_string(&rules)
        .ok()
        .and_then(|m| rule_file_of(&m))
    {
        Some(text) => {
            fs::write(&rule_file, text)?;
            check(
                &mut tally,
                "alert rules (promtool check rules)",
                Command::new("promtool")
                    .arg("check")
                    .arg("rules")
                    .arg(&rule_file),
            );
            // The alerts' unit tests, beside the extracted rules.yaml.
            let unit = rule_file.with_file_name("vmbw_rules_test.yaml");
            fs::copy(root.join("tests/promtool/vmbw_rules_test.yaml"), &unit)?;
            check(
                &mut tally,
                "alert rules fire as tests/promtool expects (promtool test rules)",
                Command::new("promtool").arg("test").arg("rules").arg(&unit),
            );
        }
        None => tally
            .failed_steps
            .push(format!("{}: no `spec:` block to check", rules.display())),
    }
    let _ = fs::remove_dir_all(&rules_dir);

    util::step("Debian package (cargo xtask deb --debug): installs, verifies, purges");
    match crate::deb::check() {
        Ok(()) => tally.checks_passed += 1,
        Err(e) => tally.failed_steps.push(format!("Debian package: {e:#}")),
    }

    util::step("unit tests");
    const UNIT: &[&str] = &[
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "vmbw-tests",
        "--exclude",
        "vmbw-ebpf",
    ];
    libtest(&mut tally, "unit tests", &mut cargo(), UNIT)?;

    let skip_dir = tempdir("vmbw-skips")?;
    const PRIVILEGED: &[&str] = &["test", "--no-fail-fast", "--package", "vmbw-tests"];
    if args.unprivileged {
        util::step("privileged integration tests: left out (--unprivileged)");
        match listed(&mut cargo(), PRIVILEGED) {
            Some(n) => {
                println!("    {n} privileged tests counted as skipped");
                tally.left_out = n;
            }
            None => tally
                .failed_steps
                .push("privileged integration tests: could not list them".into()),
        }
    } else {
        util::step("privileged integration tests (real kernel, test-made namespaces)");
        if !util::is_root() {
            println!("    not root: every privileged test will report itself skipped");
        }
        libtest(
            &mut tally,
            "privileged integration tests",
            cargo().env("VMBW_SKIP_DIR", &skip_dir),
            PRIVILEGED,
        )?;
    }
    let skipped = report_skips(&skip_dir)?;
    let _ = fs::remove_dir_all(&skip_dir);

    // A skipped test returned early, so libtest counted it as passed.
    let passed = tally.passed.saturating_sub(skipped);
    let skipped = skipped + tally.ignored + tally.left_out;
    let failed = tally.failed + tally.not_run;
    for step in &tally.failed_steps {
        println!("FAILED: {step}");
    }
    println!(
        "checks: {} passed, {} failed (fmt, clippy, eBPF build, fuzz targets, deploy/ schemas, custom resources, checkov, alert rules and their tests, the Debian package)",
        tally.checks_passed,
        CHECKS.saturating_sub(tally.checks_passed)
    );
    if tally.not_run > 0 {
        println!(
            "{} listed tests did not run (counted as failed)",
            tally.not_run
        );
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 || !tally.failed_steps.is_empty() {
        bail!("the test suite failed");
    }
    if args.strict && skipped > 0 {
        bail!("--strict: {skipped} tests were skipped");
    }
    Ok(())
}

/// Kubernetes versions deploy/ is validated against.
const KUBERNETES_VERSIONS: &[&str] = &["1.31", "1.32", "1.33", "1.34"];

/// The checks run before the tests: fmt, clippy, the eBPF build, the fuzz
/// targets, kubernetes-validate per version, the custom resources and the
/// check that their checker can fail, checkov, promtool's rule check and
/// its rule tests, the Debian package.
const CHECKS: u64 = 4 + KUBERNETES_VERSIONS.len() as u64 + 2 + 4;

/// The manifests of deploy/base and of every overlay (an overlay only adds
/// resources, so its files are what it changes), kustomizations aside.
fn deploy_manifests(root: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut dirs = vec![root.join("deploy/base")];
    for e in fs::read_dir(root.join("deploy/overlays"))? {
        dirs.push(e?.path());
    }
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(
            fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "yaml")
                        && p.file_name().is_some_and(|n| n != "kustomization.yaml")
                }),
        );
    }
    files.sort();
    Ok(files)
}

/// API groups of custom resources: kubernetes-validate has no schema for
/// them, xtask/scripts/crd-check.mjs has.
const CUSTOM_GROUPS: &[&str] = &["monitoring.coreos.com/"];

fn is_custom_resource(manifest: &Path) -> bool {
    fs::read_to_string(manifest).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.strip_prefix("apiVersion:"))
            .any(|v| CUSTOM_GROUPS.iter().any(|g| v.trim().starts_with(g)))
    })
}

/// deploy/'s custom resources against the schemas generated from their
/// CRDs; then a copy of the PodMonitor with a malformed `interval`, which
/// must fail, so a checker that accepts everything cannot pass.
fn custom_resources(tally: &mut Tally, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let script = util::workspace_root().join("xtask/scripts/crd-check.mjs");
    let modules = setup::crd_models_dir()?;
    let node = || {
        let mut c = Command::new("node");
        c.arg(&script).arg(&modules);
        c
    };
    check(
        tally,
        "deploy/ custom resources against prometheus-operator's CRD schemas (crd-check.mjs)",
        node().args(files),
    );
    let name = "the CRD check rejects a PodMonitor whose interval is not a duration";
    let Some(podmonitor) = files
        .iter()
        .find(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("kind: PodMonitor")))
    else {
        tally
            .failed_steps
            .push(format!("{name}: no PodMonitor in deploy/"));
        return Ok(());
    };
    let dir = tempdir("vmbw-crd")?;
    let bad = dir.join("podmonitor.yaml");
    let text = fs::read_to_string(podmonitor)?;
    let broken = text.replace("interval: 15s", "interval: 15 seconds");
    util::step(name);
    if broken == text {
        tally.failed_steps.push(format!(
            "{name}: {} has no `interval: 15s`",
            podmonitor.display()
        ));
    } else {
        fs::write(&bad, broken)?;
        match util::status(node().arg(&bad)) {
            Ok(s) if s.code() == Some(1) => tally.checks_passed += 1,
            _ => tally
                .failed_steps
                .push(format!("{name}: the broken copy was not rejected")),
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The Prometheus rule file inside a PrometheusRule manifest: its `spec:`
/// block, de-indented (the manifest's spec is exactly a rule file).
fn rule_file_of(manifest: &str) -> Option<String> {
    let mut lines = manifest.lines().skip_while(|l| *l != "spec:");
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("  "))
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    (!body.is_empty()).then(|| body.join("\n") + "\n")
}

/// A check that is not a libtest run; counted apart from the tests.
fn check(tally: &mut Tally, name: &str, cmd: &mut Command) {
    util::step(name);
    match util::status(cmd) {
        Ok(s) if s.success() => tally.checks_passed += 1,
        Ok(_) | Err(_) => tally.failed_steps.push(name.to_owned()),
    }
}

/// About what a clean `cargo xtask test` writes: target/ 2.7 GB and
/// fuzz/target/ 2.3 GB measured, with room to spare.
const LOW_DISK_GIB: u64 = 8;

/// Prints the free space where target/ lives: a build that runs out of
/// disk fails in whatever step it reached, so the number belongs at the
/// top of the log.
fn report_disk(root: &Path) {
    let out = Command::new("df")
        .args(["--output=avail", "-B1G"])
        .arg(root)
        .output();
    if let Ok(out) = out
        && let Some(gib) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
    {
        println!("disk: {gib} GiB free under {}", root.display());
        if gib < LOW_DISK_GIB {
            println!(
                "    warning: a clean run needs about {LOW_DISK_GIB} GiB (target/ and fuzz/target/)"
            );
        }
    }
}

/// How many tests `cargo <args> -- --list` lists, or None if listing
/// failed (e.g. a test binary did not build).
fn listed(cmd: &mut Command, args: &[&str]) -> Option<u64> {
    let out = cmd
        .args(args)
        .args(["--", "--list", "--format", "terse"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| count_listed(&String::from_utf8_lossy(&out.stdout)))
}

/// Lines `name: test` of libtest's terse list.
fn count_listed(list: &str) -> u64 {
    list.lines().filter(|l| l.ends_with(": test")).count() as u64
}

/// Lists the tests of `cargo <args>`, runs them echoing the output, and
/// adds libtest's summaries to the tally. Listed tests that no summary
/// accounts for count as not run; a run that fails without a failing test
/// (e.g. it did not compile) is a failed step.
fn libtest(tally: &mut Tally, name: &str, base: &mut Command, args: &[&str]) -> anyhow::Result<()> {
    let mut list_cmd = Command::new(base.get_program());
    if let Some(dir) = base.get_current_dir() {
        list_cmd.current_dir(dir);
    }
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            list_cmd.env(k, v);
        }
    }
    let expected = listed(&mut list_cmd, args);
    let cmd = base.args(args);
    println!("    $ {}", util::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", util::display(cmd)))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let failed_before = tally.failed;
    let counted_before = tally.passed + tally.failed + tally.ignored;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            add_summary(tally, summary);
        }
        if let Some(test) = failed_test(&line) {
            tally.failed_tests.push(test.to_owned());
        }
    }
    let status = child.wait()?;
    let counted = tally.passed + tally.failed + tally.ignored - counted_before;
    match expected {
        Some(n) if n > counted => {
            println!("    {name}: {n} tests listed, {counted} accounted for");
            tally.not_run += n - counted;
        }
        Some(_) => {}
        None => tally
            .failed_steps
            .push(format!("{name}: the tests could not be listed")),
    }
    if !status.success() && tally.failed == failed_before && tally.not_run == 0 {
        tally
            .failed_steps
            .push(format!("{name}: cargo test exited with {status}"));
    }
    Ok(())
}

/// `test NAME ... FAILED` -> NAME.
fn failed_test(line: &str) -> Option<&str> {
    line.strip_prefix("test ")?.strip_suffix(" ... FAILED")
}

/// `cargo xtask test --stress N`: the privileged tests N times under a busy
/// loop on every core; failures per test, and whether every round's tally
/// added up to the test list.
fn stress(args: &Args, rounds: u32) -> anyhow::Result<()> {
    if rounds == 0 {
        bail!("--stress needs N >= 1");
    }
    if !util::is_root() {
        bail!("--stress runs the privileged tests: run it as root");
    }
    if !args.no_setup {
        setup::run(&setup::Args::default())?;
    }
    let root = util::workspace_root();
    // Build first, without the load, so every round measures the tests.
    util::step("building the privileged tests");
    util::build_agent("dev")?;
    util::run(Command::new(env!("CARGO")).current_dir(&root).args([
        "test",
        "--no-run",
        "--package",
        "vmbw-tests",
    ]))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..1_000_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })
        })
        .collect();
    println!("    {cores} busy loops running beside the tests");
    let mut failures: std::collections::BTreeMap<String, u32> = Default::default();
    let mut clean_rounds = 0;
    for round in 1..=rounds {
        util::step(&format!("stress round {round}/{rounds}"));
        sweep_stale_namespaces();
        let mut tally = Tally::default();
        let skip_dir = tempdir("vmbw-skips")?;
        libtest(
            &mut tally,
            "privileged integration tests",
            Command::new(env!("CARGO"))
                .current_dir(&root)
                .env("VMBW_SKIP_DIR", &skip_dir),
            &["test", "--no-fail-fast", "--package", "vmbw-tests"],
        )?;
        let skipped = report_skips(&skip_dir)?;
        let _ = fs::remove_dir_all(&skip_dir);
        for t in &tally.failed_tests {
            *failures.entry(t.clone()).or_default() += 1;
        }
        let ok = tally.failed == 0 && tally.not_run == 0 && tally.failed_steps.is_empty();
        if ok {
            clean_rounds += 1;
        }
        println!(
            "round {round}: {} passed, {} failed, {} not run, {skipped} skipped{}",
            tally.passed.saturating_sub(skipped),
            tally.failed,
            tally.not_run,
            if tally.failed_steps.is_empty() {
                String::new()
            } else {
                format!("; {}", tally.failed_steps.join("; "))
            }
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    println!("stress: {clean_rounds}/{rounds} rounds clean");
    for (test, n) in &failures {
        println!("    {test}: failed {n}/{rounds}");
    }
    println!(
        "{}",
        serde_json::json!({"stress": rounds, "clean_rounds": clean_rounds, "failures": failures})
    );
    if clean_rounds < rounds {
        bail!("{} of {rounds} stress rounds failed", rounds - clean_rounds);
    }
    Ok(())
}

/// Parses `ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
fn add_summary(tally: &mut Tally, summary: &str) {
    for part in summary.split(['.', ';']) {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => tally.passed += n,
            "failed" => tally.failed += n,
            "ignored" => tally.ignored += n,
            _ => {}
        }
    }
}

/// Prints each skip marker (test name and reason) and returns their count.
fn report_skips(dir: &Path) -> anyhow::Result<u64> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        let reason = fs::read_to_string(e.path()).unwrap_or_default();
        println!(
            "SKIPPED {}: {}",
            e.file_name().to_string_lossy().replace("__", "::"),
            reason.trim()
        );
    }
    Ok(entries.len() as u64)
}

fn tempdir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes network namespaces left by test processes that were killed
/// before their guards ran: names `vmbw-t<pid>-<n>` whose pid is gone.
/// Namespaces of live processes and any other name are left alone.
fn sweep_stale_namespaces() {
    for name in vmbw_testenv::sweep_stale_namespaces() {
        println!("    removed stale test namespace {name} (its process is gone)");
    }
    for path in vmbw_testenv::sweep_stale_bpffs() {
        println!(
            "    removed stale test bpffs {} (its process is gone)",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_rule_s_spec_is_its_rule_file() {
        let m =
            "kind: PrometheusRule\nspec:\n  groups:\n    - name: a\n\n      rules: []\nother: 1\n";
        assert_eq!(
            rule_file_of(m).as_deref(),
            Some("groups:\n  - name: a\n\n    rules: []\n")
        );
        assert_eq!(rule_file_of("kind: X\n"), None);
    }

    #[test]
    fn parses_libtest_summary() {
        let mut t = Tally::default();
        add_summary(
            &mut t,
            "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 2 filtered out; finished in 0.27s",
        );
        assert_eq!((t.passed, t.failed, t.ignored), (12, 1, 3));
    }

    #[test]
    fn names_a_failed_test() {
        assert_eq!(
            failed_test("test shaping::goodput_holds ... FAILED"),
            Some("shaping::goodput_holds")
        );
        assert_eq!(failed_test("test shaping::goodput_holds ... ok"), None);
    }

    #[test]
    fn counts_only_tests_in_a_terse_list() {
        let list =
            "tests::a: test\ntests::b: test\nbench_x: benchmark\nsrc/lib.rs - f (line 3): test\n";
        assert_eq!(count_listed(list), 3);
        assert_eq!(count_listed(""), 0);
    }
}
