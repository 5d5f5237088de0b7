//! `vmbw agent`: the host agent, or with `--check` its configuration
//! validated and described.

pub fn agent(
    config: Option<std::path::PathBuf>,
    print_default_config: bool,
    check: bool,
    keep_datapath: bool,
) -> anyhow::Result<()> {
    if print_default_config {
        print!("{}", vmbw::config::DEFAULT_TOML);
        return Ok(());
    }
    let cfg = match &config {
        Some(path) => vmbw::config::Config::load(path)?,
        None => vmbw::config::Config::default(),
    };
    if check {
        print!("{}", cfg.describe());
        println!(
            "{}: valid",
            config
                .as_ref()
                .map_or("built-in defaults".into(), |p| p.display().to_string())
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(vmbw::daemon::run(vmbw::daemon::Options {
        config: cfg,
        config_path: config,
        keep_datapath,
    }))?;
    Ok(())
}
