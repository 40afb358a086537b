//! Attaching to a pod veth from two parties at once (the CNI plugin and
//! the agent's attach watcher race on every new pod). Needs root.
mod common;

use std::{
    fs::File,
    process::Command,
    sync::{Arc, Barrier},
};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use common::PinDir;
use ferry_datapath::{attach, link_pins, load_or_adopt, DatapathConfig};

/// A network namespace of this test, deleted on drop (also on panic).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("ferry-at-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns(name)
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").args(["-n", &self.0]).args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    }

    /// Moves the calling thread into the namespace.
    fn enter(name: &str) {
        let f = File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }

    /// How many programs are attached to `dev`'s tcx hook `at`.
    fn attached(&self, dev: &str, at: TcAttachType) -> usize {
        let (name, dev) = (self.0.clone(), dev.to_owned());
        std::thread::spawn(move || {
            Netns::enter(&name);
            SchedClassifier::query_tcx(&dev, at).unwrap().1.len()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Both parties attach the same veth at the same moment: both succeed
/// (whoever lost the race adopts the winner's link) and exactly one link
/// per program is pinned and attached.
#[test]
fn concurrent_attach_both_succeed_one_link_pair() {
    let pin = PinDir::new();
    load_or_adopt(pin.path(), &DatapathConfig::small()).expect("load");
    let ns = Netns::new("race");
    // Repeated: the window is a few microseconds wide.
    for round in 0..30 {
        let (host, peer) = (format!("fat{round}"), format!("fap{round}"));
        ns.ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, pin_dir, ns_name, host) =
                    (barrier.clone(), pin.path().to_owned(), ns.0.clone(), host.clone());
                std::thread::spawn(move || {
                    Netns::enter(&ns_name);
                    barrier.wait();
                    attach(&pin_dir, host.as_str())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut created = 0;
        for r in &results {
            match r {
                Ok(a) => created += a.created as usize,
                Err(e) => panic!("round {round}: attach failed: {e}"),
            }
        }
        assert!(created >= 1, "round {round}: someone attached");
        let ifindex = results[0].as_ref().unwrap().ifindex;
        let pins = link_pins(pin.path()).unwrap().into_iter().filter(|p| p.0 == ifindex).count();
        assert_eq!(pins, 2, "round {round}: one link pinned per program");
        assert_eq!(ns.attached(&host, TcAttachType::Ingress), 1, "round {round}: one program on ingress");
        assert_eq!(ns.attached(&host, TcAttachType::Egress), 1, "round {round}: one program on egress");
    }
}
