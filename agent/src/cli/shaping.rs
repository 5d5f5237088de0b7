//! `vmbw shaping`: vmbw's HTB tree on a device, read-only.

use anyhow::Context as _;

pub fn show(iface: &str) -> anyhow::Result<()> {
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
            let root = qdiscs
                .iter()
                .find(|q| q.parent == vmbw::shaping::handles::TC_H_ROOT)
                .map_or("none".to_owned(), |q| {
                    format!("{} {}", q.kind, display_handle(q.handle))
                });
            println!("{iface}: not shaped by vmbw (root qdisc: {root})");
            return anyhow::Ok(());
        };
        println!(
            "{iface}: vmbw HTB tree, mtu {}, default class 7662:{:x}",
            link.mtu, tree.default_minor
        );
        for c in tree.classes.values() {
            let role = match class_role(c.handle) {
                Some(ClassRole::Root) => "link".to_owned(),
                Some(ClassRole::Default) => "default".to_owned(),
                Some(ClassRole::Urgent) => "post-copy urgent".to_owned(),
                Some(ClassRole::Probe) => "fq probe".to_owned(),
                Some(ClassRole::Vm { slot, class }) => format!("VM {slot} {class}"),
                None => "not vmbw's".to_owned(),
            };
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
