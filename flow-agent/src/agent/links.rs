//! The interfaces the agent watches: attaching at start and as links appear,
//! detaching as they go, and the bridges all of whose ports are watched.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tracing::{info, warn};

use super::{AgentError, drain_thread::Agent, error_chain};
use crate::{
    datapath::DatapathError,
    interfaces::{ARPHRD_LOOPBACK, Link, LinkEvent, list_links},
    output::RecordSink,
};

/// Each link's master (bridge), for the links that have one.
pub(super) fn masters_of(links: &[Link]) -> HashMap<u32, u32> {
    links
        .iter()
        .filter_map(|link| Some((link.index, link.master?)))
        .collect()
}

impl<S: RecordSink> Agent<S> {
    /// Attaches to links not yet attached; returns the failures.
    pub(super) fn attach(&mut self, links: &[Link]) -> Vec<(String, DatapathError)> {
        let mut wanted = Vec::new();
        for link in links {
            if self.names.contains_key(&link.index) && !self.removed.contains(&link.index) {
                continue;
            }
            if link.link_type == ARPHRD_LOOPBACK {
                // A looped packet passes lo's egress and then its ingress, and
                // egress comes first, so nothing marks it as counted.
                warn!(
                    interface = link.name,
                    "skipping the loopback device: each packet would be counted twice"
                );
                continue;
            }
            if !link.has_ethernet_header() {
                warn!(
                    interface = link.name,
                    link_type = link.link_type,
                    "skipping interface without an Ethernet header"
                );
                continue;
            }
            wanted.push((link.index, link.name.clone()));
        }
        let failures = self.datapath.attach_all(&wanted);
        for (index, name) in wanted {
            if failures.iter().all(|(failed, _)| *failed != name) {
                info!(interface = name, index, "attached");
                self.removed.retain(|removed| *removed != index);
                self.names.insert(index, name);
            }
        }
        for (name, error) in &failures {
            warn!(interface = name, error = %error_chain(error), "attach failed");
        }
        failures
    }

    /// Bridges all of whose ports are attached go into the counted set
    /// ([`crate::datapath::Datapath::set_bridges`]).
    pub(super) fn update_bridges(&mut self) {
        let attached: HashSet<u32> = self.datapath.attached().map(|(index, _)| index).collect();
        let mut complete: BTreeMap<u32, bool> = BTreeMap::new();
        for (port, master) in &self.masters {
            *complete.entry(*master).or_insert(true) &= attached.contains(port);
        }
        let bridges: BTreeSet<u32> = complete
            .into_iter()
            .filter(|(master, all)| *all && !attached.contains(master))
            .map(|(master, _)| master)
            .collect();
        if bridges != *self.datapath.bridges() {
            info!(bridges = ?bridges, "bridges whose every port is watched: what they route between ports is counted once");
            self.datapath.set_bridges(&bridges);
        }
    }

    pub(super) fn on_link_events(&mut self, events: Vec<LinkEvent>) -> Result<(), AgentError> {
        for event in &events {
            match event {
                LinkEvent::New(Link { index, master, .. }) => match master {
                    Some(master) => {
                        self.masters.insert(*index, *master);
                    }
                    None => {
                        self.masters.remove(index);
                    }
                },
                LinkEvent::Removed(Link { index, .. }) => {
                    self.masters.remove(index);
                }
                LinkEvent::Resync => {}
            }
        }
        let result = self.apply_link_events(events);
        self.update_bridges();
        result
    }

    fn apply_link_events(&mut self, events: Vec<LinkEvent>) -> Result<(), AgentError> {
        for event in events {
            match event {
                LinkEvent::New(link) => self.on_new_link(link),
                LinkEvent::Removed(Link { index, name, .. }) => self.on_removed_link(index, &name),
                LinkEvent::Resync => self.resync_links()?,
            }
        }
        Ok(())
    }

    fn resync_links(&mut self) -> Result<(), AgentError> {
        warn!("link notifications overran; re-listing interfaces");
        let links = list_links()?;
        self.masters = masters_of(&links);
        let present: Vec<u32> = links.iter().map(|link| link.index).collect();
        let gone: Vec<(u32, String)> = self
            .datapath
            .attached()
            .filter(|(index, _)| !present.contains(index))
            .map(|(index, name)| (index, name.to_owned()))
            .collect();
        for (index, name) in gone {
            self.on_removed_link(index, &name);
        }
        for link in links {
            self.on_new_link(link);
        }
        Ok(())
    }

    fn on_new_link(&mut self, link: Link) {
        let attached_name = self
            .datapath
            .attached()
            .find(|(index, _)| *index == link.index)
            .map(|(_, name)| name.to_owned());
        let selected = self.config.interfaces.matches(&link.name);
        match attached_name {
            Some(name) if name == link.name => {}
            Some(name) if !selected => {
                info!(
                    interface = name,
                    new_name = link.name,
                    "renamed out of selection; detaching"
                );
                self.on_removed_link(link.index, &name);
            }
            Some(_) => {
                // Renamed within the selection: the programs stay; both
                // places that hold the name learn the new one.
                self.datapath.rename(link.index, &link.name);
                self.names.insert(link.index, link.name);
            }
            None if selected => {
                let _failures = self.attach(std::slice::from_ref(&link));
            }
            None => {}
        }
    }

    fn on_removed_link(&mut self, index: u32, name: &str) {
        if !self.names.contains_key(&index) || self.removed.contains(&index) {
            return;
        }
        self.datapath.detach(index);
        // Keep the name until the next drain has reported the last packets.
        self.removed.push(index);
        info!(interface = name, index, "detached (interface removed)");
    }
}
