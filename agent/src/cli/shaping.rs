//! `vmbw shaping`: vmbw's HTB tree on a device, read-only.

use anyhow::Context as _;

/// One class, as `--json` prints it.
#[derive(serde::Serialize)]
struct ClassJson {
    handle: String,
    parent: String,
    role: String,
    rate_bits_per_sec: u64,
    ceil_bits_per_sec: u64,
    prio: u32,
    leaf: Option<String>,
    bytes: u64,
    packets: u64,
}

pub fn show(iface: &str, json: bool) -> anyhow::Result<()> {
    use vmbw::shaping::{
        ObservedTree, Rate, TcClient,
        handles::{ClassRole, class_role, display_handle},
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let tc = TcClient::connect()?;
        let link = tc.link(iface).await?;
        let qdiscs = tc.qdiscs(&link).await?;
        let classes = tc.classes(&link).await?;
        let Some(tree) = ObservedTree::from_dump(&qdiscs, &classes)
            .with_context(|| format!("reading the tree on {iface}"))?
        else {
            let root = vmbw::shaping::describe_root(&qdiscs);
            if json {
                let out = serde_json::json!({"iface": iface, "shaped": false, "root": root});
                println!("{out}");
            } else {
                println!("{iface}: not shaped by vmbw (root qdisc: {root})");
            }
            return anyhow::Ok(());
        };
        let role_of = |handle| match class_role(handle) {
            Some(ClassRole::Root) => "link".to_owned(),
            Some(ClassRole::Default) => "default".to_owned(),
            Some(ClassRole::Urgent) => "post-copy urgent".to_owned(),
            Some(ClassRole::Probe) => "fq probe".to_owned(),
            Some(ClassRole::Vm { slot, class }) => format!("VM {slot} {class}"),
            None => "not vmbw's".to_owned(),
        };
        if json {
            let classes: Vec<ClassJson> = tree
                .classes
                .values()
                .map(|c| ClassJson {
                    handle: display_handle(c.handle),
                    parent: display_handle(c.parent),
                    role: role_of(c.handle),
                    rate_bits_per_sec: c.params.rate * 8,
                    ceil_bits_per_sec: c.params.ceil * 8,
                    prio: c.params.prio,
                    leaf: c.leaf.as_ref().map(|l| l.kind.clone()),
                    bytes: c.bytes,
                    packets: c.packets,
                })
                .collect();
            let out = serde_json::json!({
                "iface": iface,
                "shaped": true,
                "mtu": link.mtu,
                "default_class": format!("7662:{:x}", tree.default_minor),
                "classes": classes,
            });
            println!("{out}");
            return anyhow::Ok(());
        }
        println!(
            "{iface}: vmbw HTB tree, mtu {}, default class 7662:{:x}",
            link.mtu, tree.default_minor
        );
        for c in tree.classes.values() {
            let role = role_of(c.handle);
            println!(
                "  class {:<10} {:<18} rate {:>14} ceil {:>14} prio {} leaf {:<6} sent {} bytes",
                display_handle(c.handle),
                role,
                Rate::bits_per_sec(c.params.rate * 8).to_string(),
                Rate::bits_per_sec(c.params.ceil * 8).to_string(),
                c.params.prio,
                c.leaf.as_ref().map_or("-", |l| l.kind.as_str()),
                c.bytes
            );
        }
        anyhow::Ok(())
    })
}
