//! Typed access to the classification tables and the steering settings.
//! VM slots are 1..MAX_VMS (0 is "no VM"); the caller allocates them.

use std::net::IpAddr;

use aya::maps::{Array, HashMap};
use vmbw_common::{
    AddrKey, ClassConfig, FLOW_URGENT, FlowKey, MAX_VMS, NO_VM, Settings, class_index,
    classify::{ip_key, mac_key},
    map, mode,
    parse::mapped_v4,
};

use super::{Datapath, DatapathError, map_err};

/// What the egress program does beyond counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count only.
    Observe,
    /// Steer into HTB classes via `skb->priority`.
    Htb,
    /// Pace with `skb->tstamp` (needs `fq` on the device).
    Edt,
}

impl Mode {
    fn raw(self) -> u32 {
        match self {
            Mode::Observe => mode::OBSERVE,
            Mode::Htb => mode::HTB,
            Mode::Edt => mode::EDT,
        }
    }

    fn from_raw(raw: u32) -> Option<Mode> {
        match raw {
            mode::OBSERVE => Some(Mode::Observe),
            mode::HTB => Some(Mode::Htb),
            mode::EDT => Some(Mode::Edt),
            _ => None,
        }
    }
}

/// Which end of a connection a migration port range describes.
/// Which class a registered migration flow's packets go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// The VM's migration class: the background stream.
    Background,
    /// The urgent class: pages a post-copy guest is waiting for.
    Urgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSide {
    /// This host's port (e.g. the destination's listening port).
    Local,
    /// The peer's port (e.g. the port the source connects to).
    Remote,
}

/// 16-byte key form of an IP address (IPv4 mapped).
pub(crate) fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn check_slot(vm: u32) -> Result<(), DatapathError> {
    if vm == NO_VM || vm >= MAX_VMS {
        return Err(DatapathError::InvalidSlot(vm));
    }
    Ok(())
}

impl Datapath {
    /// Sets what the egress program does beyond counting (the urgent
    /// class stays as it is).
    pub fn set_mode(&mut self, m: Mode) -> Result<(), DatapathError> {
        self.update_settings(|s| s.mode = m.raw())
    }

    /// Where HTB mode steers urgent flows (urgent [`Self::add_migration_flow`]s): a
    /// class handle, or 0 to leave them in their VM's migration class.
    pub fn set_urgent_priority(&mut self, handle: u32) -> Result<(), DatapathError> {
        self.update_settings(|s| s.urgent_priority = handle)
    }

    fn update_settings(&mut self, f: impl FnOnce(&mut Settings)) -> Result<(), DatapathError> {
        let mut settings: Array<_, Settings> = self.array(map::SETTINGS)?;
        let mut s = settings
            .get(&0, 0)
            .map_err(map_err(map::SETTINGS, "read"))?;
        f(&mut s);
        settings
            .set(0, s, 0)
            .map_err(map_err(map::SETTINGS, "write"))
    }

    /// The current mode (as a previous agent may have left it).
    pub fn mode(&self) -> Result<Mode, DatapathError> {
        let m = self
            .ebpf()
            .map(map::SETTINGS)
            .ok_or(DatapathError::MissingMap(map::SETTINGS))?;
        let settings: Array<_, Settings> =
            Array::try_from(m).map_err(map_err(map::SETTINGS, "open"))?;
        let s = settings
            .get(&0, 0)
            .map_err(map_err(map::SETTINGS, "read"))?;
        Ok(Mode::from_raw(s.mode).unwrap_or(Mode::Observe))
    }

    /// Attributes traffic from/to `ip` (the VM's address) to `vm`.
    pub fn add_vm_ip(&mut self, vm: u32, ip: IpAddr) -> Result<(), DatapathError> {
        self.insert_addr(vm, ip_key(ip_bytes(ip)))
    }

    pub fn remove_vm_ip(&mut self, ip: IpAddr) -> Result<(), DatapathError> {
        self.remove_addr(ip_key(ip_bytes(ip)))
    }

    /// Attributes frames from/to `mac` to `vm`.
    pub fn add_vm_mac(&mut self, vm: u32, mac: [u8; 6]) -> Result<(), DatapathError> {
        self.insert_addr(vm, mac_key(mac))
    }

    pub fn remove_vm_mac(&mut self, mac: [u8; 6]) -> Result<(), DatapathError> {
        self.remove_addr(mac_key(mac))
    }

    /// Attributes traffic forwarded from the tap device `ifindex` to `vm`.
    pub fn add_vm_tap(&mut self, vm: u32, ifindex: u32) -> Result<(), DatapathError> {
        check_slot(vm)?;
        let mut m: HashMap<_, u32, u32> = self.hash(map::IFINDEX)?;
        m.insert(ifindex, vm, 0)
            .map_err(map_err(map::IFINDEX, "insert"))
    }

    pub fn remove_vm_tap(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut m: HashMap<_, u32, u32> = self.hash(map::IFINDEX)?;
        ignore_missing(m.remove(&ifindex)).map_err(map_err(map::IFINDEX, "remove"))
    }

    /// Registers (or re-flags) an exact migration flow of `vm`, from this
    /// host's point of view (`local` is this host's end). `proto` is 6
    /// (TCP) or 17 (UDP). An [`Urgency::Urgent`] flow carries the pages a
    /// post-copy guest waits for: counted as migration, steered into the
    /// urgent class ([`vmbw_common::FLOW_URGENT`]).
    pub fn add_migration_flow(
        &mut self,
        vm: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        proto: u8,
        urgency: Urgency,
    ) -> Result<(), DatapathError> {
        let flags = match urgency {
            Urgency::Background => 0,
            Urgency::Urgent => FLOW_URGENT,
        };
        self.insert_flow(vm, local, remote, proto, flags)
    }

    fn insert_flow(
        &mut self,
        vm: u32,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        proto: u8,
        flags: u32,
    ) -> Result<(), DatapathError> {
        check_slot(vm)?;
        let key = flow_key(local, remote, proto);
        let mut m: HashMap<_, FlowKey, u32> = self.hash(map::FLOWS)?;
        m.insert(key, vm | flags, 0)
            .map_err(map_err(map::FLOWS, "insert"))
    }

    pub fn remove_migration_flow(
        &mut self,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        proto: u8,
    ) -> Result<(), DatapathError> {
        let key = flow_key(local, remote, proto);
        let mut m: HashMap<_, FlowKey, u32> = self.hash(map::FLOWS)?;
        ignore_missing(m.remove(&key)).map_err(map_err(map::FLOWS, "remove"))
    }

    /// Marks every TCP/UDP packet whose `side` port is in `first..=last` as
    /// migration traffic of `vm` (e.g. QEMU's migration listening port).
    pub fn set_migration_ports(
        &mut self,
        vm: u32,
        side: PortSide,
        first: u16,
        last: u16,
    ) -> Result<(), DatapathError> {
        check_slot(vm)?;
        self.write_ports(vm, side, first, last)
    }

    /// Releases a port range set with [`Self::set_migration_ports`].
    pub fn clear_migration_ports(
        &mut self,
        side: PortSide,
        first: u16,
        last: u16,
    ) -> Result<(), DatapathError> {
        self.write_ports(NO_VM, side, first, last)
    }

    /// Sets the steering of one (vm, class): HTB class handle and/or EDT
    /// rate and horizon. `vm` may be 0 for host/unknown traffic.
    pub fn set_class(
        &mut self,
        vm: u32,
        class: u32,
        config: ClassConfig,
    ) -> Result<(), DatapathError> {
        if vm >= MAX_VMS || class >= vmbw_common::class::COUNT {
            return Err(DatapathError::InvalidSlot(vm));
        }
        let mut m: Array<_, ClassConfig> = self.array(map::CLASS_CONFIG)?;
        m.set(class_index(vm, class), config, 0)
            .map_err(map_err(map::CLASS_CONFIG, "write"))
    }

    /// Every VM address registered (IP or MAC key) with its slot: what a
    /// restarted agent reads back to rebuild its view.
    pub fn registered_addrs(&self) -> Result<Vec<(AddrKey, u32)>, DatapathError> {
        let m = self
            .ebpf()
            .map(map::ADDRS)
            .ok_or(DatapathError::MissingMap(map::ADDRS))?;
        let h: HashMap<_, AddrKey, u32> =
            HashMap::try_from(m).map_err(map_err(map::ADDRS, "open"))?;
        h.iter()
            .map(|r| r.map_err(map_err(map::ADDRS, "iterate")))
            .collect()
    }

    fn write_ports(
        &mut self,
        vm: u32,
        side: PortSide,
        first: u16,
        last: u16,
    ) -> Result<(), DatapathError> {
        if first > last {
            return Err(DatapathError::InvalidPortRange { first, last });
        }
        let base = match side {
            PortSide::Local => 0u32,
            PortSide::Remote => 65536,
        };
        let mut m: Array<_, u32> = self.array(map::PORTS)?;
        for port in first..=last {
            m.set(base + u32::from(port), vm, 0)
                .map_err(map_err(map::PORTS, "write"))?;
        }
        Ok(())
    }

    fn insert_addr(&mut self, vm: u32, key: AddrKey) -> Result<(), DatapathError> {
        check_slot(vm)?;
        let mut m: HashMap<_, AddrKey, u32> = self.hash(map::ADDRS)?;
        m.insert(key, vm, 0).map_err(map_err(map::ADDRS, "insert"))
    }

    fn remove_addr(&mut self, key: AddrKey) -> Result<(), DatapathError> {
        let mut m: HashMap<_, AddrKey, u32> = self.hash(map::ADDRS)?;
        ignore_missing(m.remove(&key)).map_err(map_err(map::ADDRS, "remove"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut aya::maps::MapData, K, V>, DatapathError> {
        let m = self
            .ebpf_mut()
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        HashMap::try_from(m).map_err(map_err(name, "open"))
    }

    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut aya::maps::MapData, V>, DatapathError> {
        let m = self
            .ebpf_mut()
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        Array::try_from(m).map_err(map_err(name, "open"))
    }
}

fn flow_key(local: (IpAddr, u16), remote: (IpAddr, u16), proto: u8) -> FlowKey {
    FlowKey {
        local_addr: ip_bytes(local.0),
        remote_addr: ip_bytes(remote.0),
        local_port: local.1,
        remote_port: remote.1,
        proto,
        _pad: [0; 3],
    }
}

/// Removing what is not there is not an error.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
