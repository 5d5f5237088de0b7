//! Which domains run on this host, as libvirt tells it: the running ones
//! when the watch starts, then each domain that starts or stops, from
//! libvirt's lifecycle events (`VIR_DOMAIN_EVENT_ID_LIFECYCLE`).
//!
//! libvirt delivers events only to a process that runs an event loop: the
//! watch registers libvirt's default loop (once per process, before its
//! connection opens) and runs it on a thread of its own, connected or not
//! (the VM tasks' later connections answer their keepalives from it). A
//! 1 s timer on that loop lets the thread notice a stop, see a dropped
//! connection (libvirtd restarted: it reconnects every [`RECONNECT`]) and
//! list the running domains again every [`RELIST`], so that an event lost
//! while the connection was down shows up as a difference. The list after a
//! reconnect is compared with what was reported, so a domain that stopped
//! meanwhile is reported gone.
//!
//! What a domain's entry needs besides its name comes from its live XML:
//! the host side of each interface (`<target dev='vnet0'/>`, the tap) and
//! its MAC address; the datapath attributes the VM's traffic by them.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    sync::{
        Arc, Once,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};
use virt::{connect::Connect, sys};

/// How often the running domains are listed again.
pub const RELIST: Duration = Duration::from_secs(10);
/// How long after a lost connection the watch connects again.
pub const RECONNECT: Duration = Duration::from_secs(2);

/// A running domain, as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningDomain {
    pub name: String,
    /// Host-side interfaces (`<target dev=…>`), in the XML's order.
    pub taps: Vec<String>,
    /// The interfaces' MAC addresses, `aa:bb:cc:dd:ee:ff`.
    pub macs: Vec<String>,
}

/// What changed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainChange {
    /// Running (when the watch started, or it just started, including as
    /// an incoming migration).
    Running(RunningDomain),
    /// Stopped, migrated away, crashed or undefined.
    Gone(String),
}

/// Domain changes from a libvirt connection; stops its thread on drop.
pub struct DomainWatch {
    changes: UnboundedReceiver<DomainChange>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DomainWatch {
    /// Starts watching `uri` (e.g. `qemu:///system`). Connection problems
    /// are logged and retried, not returned: libvirtd may start after the
    /// agent.
    pub fn start(uri: &str) -> DomainWatch {
        let (tx, changes) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (uri, flag) = (uri.to_owned(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("vmbw-libvirt-watch".into())
            .spawn(move || run(&uri, &tx, &flag))
            .map_err(
                |e| warn!(error = %crate::api::errors::chain(&e), "no thread for libvirt discovery"),
            )
            .ok();
        DomainWatch {
            changes,
            stop,
            thread,
        }
    }

    /// The next change; None once the watch stopped.
    pub async fn next(&mut self) -> Option<DomainChange> {
        self.changes.recv().await
    }
}

impl Drop for DomainWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The loop wakes at least every second to look at the flag.
            let _ = t.join();
        }
    }
}

/// libvirt's lifecycle event numbers (`virDomainEventType`).
mod event {
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 5;
    pub const CRASHED: i32 = 8;
}

/// What the lifecycle callback shares with the watch thread.
struct Watcher {
    tx: UnboundedSender<DomainChange>,
    /// Started domains the callback saw; the thread reads their XML
    /// outside libvirt's callback.
    started: std::sync::Mutex<Vec<String>>,
    /// Domains reported running (with what was reported).
    reported: std::sync::Mutex<BTreeMap<String, RunningDomain>>,
}

impl Watcher {
    fn running(&self, d: RunningDomain) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.get(&d.name) != Some(&d) {
            info!(domain = %d.name, taps = ?d.taps, "libvirt: domain running");
            reported.insert(d.name.clone(), d.clone());
            let _ = self.tx.send(DomainChange::Running(d));
        }
    }

    fn gone(&self, name: &str) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.remove(name).is_some() {
            info!(domain = %name, "libvirt: domain gone");
            let _ = self.tx.send(DomainChange::Gone(name.to_owned()));
        }
    }

    /// Reports the running domains, and as gone those reported before
    /// that no longer run.
    fn relist(&self, conn: &Connect) -> Result<(), virt::error::Error> {
        let mut now = Vec::new();
        for dom in conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
            match running_domain(&dom) {
                Ok(d) => now.push(d),
                // Gone between the list and the XML.
                Err(e) => {
                    debug!(error = %crate::api::errors::chain(&e), "libvirt: a listed domain vanished")
                }
            }
        }
        let gone: Vec<String> = {
            let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            reported
                .keys()
                .filter(|n| !now.iter().any(|d| &d.name == *n))
                .cloned()
                .collect()
        };
        for name in gone {
            self.gone(&name);
        }
        for d in now {
            self.running(d);
        }
        Ok(())
    }
}

fn run(uri: &str, tx: &UnboundedSender<DomainChange>, stop: &AtomicBool) {
    static LOOP: Once = Once::new();
    LOOP.call_once(|| {
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            warn!(error = %crate::api::errors::chain(&e), "libvirt's event loop could not be registered");
        }
    });
    let watcher = Arc::new(Watcher {
        tx: tx.clone(),
        started: Default::default(),
        reported: Default::default(),
    });
    // One timer keeps the loop turning at least once a second.
    // SAFETY: a plain callback with no state; libvirt calls it on this
    // thread from virEventRunDefaultImpl.
    let timer = unsafe { sys::virEventAddTimeout(1000, Some(tick), std::ptr::null_mut(), None) };
    let mut first = true;
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        let conn = match Connect::open(Some(uri)) {
            Ok(c) => c,
            Err(e) => {
                if first {
                    warn!(uri, error = %crate::api::errors::chain(&e), "libvirt discovery: cannot connect yet; retrying");
                }
                first = false;
                sleep_unless(stop, RECONNECT);
                continue;
            }
        };
        first = true;
        info!(uri, "libvirt discovery: connected, following domains");
        let callback = register(&conn, &watcher);
        if let Err(e) = watcher.relist(&conn) {
            warn!(error = %crate::api::errors::chain(&e), "libvirt discovery: listing domains");
        }
        let mut listed = Instant::now();
        while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
            // SAFETY: the default loop was registered above; this thread
            // is the only one that runs it.
            if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                break;
            }
            let started: Vec<String> =
                std::mem::take(&mut *watcher.started.lock().unwrap_or_else(|p| p.into_inner()));
            for name in started {
                match virt::domain::Domain::lookup_by_name(&conn, &name)
                    .and_then(|d| running_domain(&d))
                {
                    Ok(d) => watcher.running(d),
                    Err(e) => {
                        debug!(domain = %name, error = %crate::api::errors::chain(&e), "libvirt: started, then gone")
                    }
                }
            }
            if !conn.is_alive().unwrap_or(false) {
                warn!(uri, "libvirt discovery: connection lost; reconnecting");
                break;
            }
            if listed.elapsed() >= RELIST {
                if let Err(e) = watcher.relist(&conn) {
                    warn!(error = %crate::api::errors::chain(&e), "libvirt discovery: listing domains");
                }
                listed = Instant::now();
            }
        }
        if let Some(id) = callback {
            // SAFETY: deregisters the callback registered on this connection.
            unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
        }
        let mut conn = conn;
        let _ = conn.close();
        sleep_unless(stop, RECONNECT);
    }
    if timer >= 0 {
        // SAFETY: removes the timer this thread added.
        unsafe { sys::virEventRemoveTimeout(timer) };
    }
}

/// Waits `d` (or until `stop`) while still turning libvirt's event loop:
/// once the default loop is registered, every connection the process
/// opens afterwards (the VM tasks' too) answers its keepalives from it.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        // SAFETY: the default loop is registered before the first call;
        // the 1 s timer bounds each turn.
        if unsafe { sys::virEventRunDefaultImpl() } < 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

unsafe extern "C" fn tick(_timer: libc::c_int, _opaque: *mut libc::c_void) {}

/// Registers the lifecycle callback on `conn`; its id, or None (logged).
fn register(conn: &Connect, watcher: &Arc<Watcher>) -> Option<libc::c_int> {
    let opaque = Arc::into_raw(watcher.clone()) as *mut libc::c_void;
    // SAFETY: libvirt calls back with the signature of
    // virConnectDomainEventCallback for VIR_DOMAIN_EVENT_ID_LIFECYCLE (the
    // API takes the generic type and documents the cast); `opaque` is an
    // Arc<Watcher> that `release` gives back when libvirt drops the
    // registration.
    let id = unsafe {
        let cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            libc::c_int,
            libc::c_int,
            *mut libc::c_void,
        ) -> libc::c_int = lifecycle;
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as libc::c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    libc::c_int,
                    libc::c_int,
                    *mut libc::c_void,
                ) -> libc::c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut libc::c_void),
            >(cb)),
            opaque,
            Some(release),
        )
    };
    if id < 0 {
        // SAFETY: libvirt did not take it; give the reference back.
        unsafe { drop(Arc::from_raw(opaque as *const Watcher)) };
        warn!(
            error = %virt::error::Error::last_error(),
            "libvirt discovery: no lifecycle events; domains are found by listing every {} s",
            RELIST.as_secs()
        );
        return None;
    }
    Some(id)
}

unsafe extern "C" fn release(opaque: *mut libc::c_void) {
    // SAFETY: the Arc<Watcher> leaked in `register`.
    unsafe { drop(Arc::from_raw(opaque as *const Watcher)) };
}

unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: libc::c_int,
    _detail: libc::c_int,
    opaque: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `opaque` is the Watcher registered with this callback; the
    // domain pointer and its name are valid for the callback's duration.
    let (watcher, name) = unsafe {
        let name = sys::virDomainGetName(dom);
        if name.is_null() {
            return 0;
        }
        (
            &*(opaque as *const Watcher),
            CStr::from_ptr(name).to_string_lossy().into_owned(),
        )
    };
    match event {
        event::STARTED => watcher
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name),
        event::STOPPED | event::CRASHED | event::UNDEFINED => watcher.gone(&name),
        _ => {}
    }
    0
}

fn running_domain(dom: &virt::domain::Domain) -> Result<RunningDomain, virt::error::Error> {
    let name = dom.get_name()?;
    let xml = dom.get_xml_desc(0)?;
    let (taps, macs) = interfaces(&xml);
    Ok(RunningDomain { name, taps, macs })
}

/// The host-side device and MAC address of each `<interface>` in a
/// domain's XML.
pub fn interfaces(xml: &str) -> (Vec<String>, Vec<String>) {
    let (mut taps, mut macs) = (Vec::new(), Vec::new());
    let mut rest = xml;
    while let Some(start) = rest.find("<interface ") {
        let block = &rest[start..];
        let end = block.find("</interface>").unwrap_or(block.len());
        let iface = &block[..end];
        if let Some(dev) = attr(iface, "<target ", "dev") {
            taps.push(dev);
        }
        if let Some(mac) = attr(iface, "<mac ", "address") {
            macs.push(mac);
        }
        rest = &block[end..];
    }
    (taps, macs)
}

/// The value of `name` in the first `element` tag of `xml`.
fn attr(xml: &str, element: &str, name: &str) -> Option<String> {
    let tag = &xml[xml.find(element)?..];
    let tag = &tag[..tag.find('>')?];
    let at = tag.find(&format!("{name}="))? + name.len() + 1;
    let quote = tag[at..].chars().next()?;
    let value = &tag[at + 1..];
    Some(value[..value.find(quote)?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_and_macs_from_a_domains_xml() {
        let xml = r#"<domain type='qemu' id='3'>
  <name>web</name>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:12:34:56'/>
      <target dev='vnet7' managed='no'/>
      <model type='virtio'/>
    </interface>
    <interface type="bridge">
      <mac address="52:54:00:ab:cd:ef"/>
      <source bridge="br0"/>
      <target dev="vnet8"/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:00:00:01'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
  </devices>
</domain>"#;
        let (taps, macs) = interfaces(xml);
        assert_eq!(taps, ["vnet7", "vnet8"]);
        assert_eq!(
            macs,
            [
                "52:54:00:12:34:56",
                "52:54:00:ab:cd:ef",
                "52:54:00:00:00:01"
            ]
        );
    }

    #[test]
    fn no_interfaces_no_taps() {
        assert_eq!(interfaces("<domain><devices/></domain>"), (vec![], vec![]));
    }
}
