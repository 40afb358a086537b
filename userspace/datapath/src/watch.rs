//! The attach-watcher: attaches the data path to existing interfaces that
//! match a pattern, then to every new one as rtnetlink announces it, and
//! cleans the link pins of interfaces that go away.
use std::{path::PathBuf, sync::mpsc, thread::JoinHandle};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use rtnetlink::MulticastGroup;
use tracing::{info, warn};

use crate::{attach, detach, Error, IfacePattern, Result};

/// What the watcher did.
#[derive(Debug)]
pub enum WatchEvent {
    Attached { ifname: String, ifindex: u32 },
    AttachFailed { ifname: String, ifindex: u32, error: Error },
    Detached { ifindex: u32 },
}

/// A running watcher; stops (and joins its thread) on [`AttachWatcher::stop`]
/// or drop.
pub struct AttachWatcher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AttachWatcher {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AttachWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the watcher on a dedicated thread, which inherits the calling
/// thread's network namespace (enter the node namespace first). Returns
/// once it is subscribed to link events and has attached to the interfaces
/// that already exist, so nothing created afterwards is missed.
pub fn spawn_attach_watcher(
    pin_dir: PathBuf,
    pattern: IfacePattern,
    on_event: impl FnMut(WatchEvent) + Send + 'static,
) -> Result<AttachWatcher> {
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("ferry-attach".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Netlink(format!("runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(run(pin_dir, pattern, on_event, ready_tx, stop_rx));
        })
        .map_err(|e| Error::Netlink(format!("spawning the watcher thread: {e}")))?;
    let mut watcher = AttachWatcher { stop: Some(stop_tx), thread: Some(thread) };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(watcher),
        Ok(Err(e)) => {
            watcher.shutdown();
            Err(e)
        }
        Err(_) => {
            watcher.shutdown();
            Err(Error::Netlink("watcher thread exited during start".into()))
        }
    }
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

async fn run(
    pin_dir: PathBuf,
    pattern: IfacePattern,
    mut on_event: impl FnMut(WatchEvent),
    ready: mpsc::SyncSender<Result<()>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let handle_link = |msg: &LinkMessage, on_event: &mut dyn FnMut(WatchEvent)| {
        let ifindex = msg.header.index;
        let Some(name) = link_name(msg) else { return };
        if !pattern.matches(name) {
            return;
        }
        match attach(&pin_dir, ifindex) {
            Ok(a) if a.created => {
                info!(ifname = name, ifindex, "data path attached");
                on_event(WatchEvent::Attached { ifname: a.ifname, ifindex });
            }
            Ok(_) => {}
            // The interface may have vanished between the event and now.
            Err(error) => {
                warn!(ifname = name, ifindex, %error, "attach failed");
                on_event(WatchEvent::AttachFailed { ifname: name.to_owned(), ifindex, error });
            }
        }
    };

    // Subscribe first, then list: an interface created in between shows up
    // in both, and attach is idempotent.
    let (conn, handle, mut messages) = match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(Error::Netlink(format!("link event socket: {e}"))));
            return;
        }
    };
    tokio::spawn(conn);
    let mut dump = handle.link().get().execute();
    loop {
        match dump.try_next().await {
            Ok(Some(msg)) => handle_link(&msg, &mut on_event),
            Ok(None) => break,
            Err(e) => {
                let _ = ready.send(Err(Error::Netlink(format!("listing links: {e}"))));
                return;
            }
        }
    }
    if ready.send(Ok(())).is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = &mut stop => return,
            msg = messages.next() => {
                let Some((msg, _)) = msg else {
                    warn!("link event stream ended");
                    return;
                };
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        handle_link(&link, &mut on_event);
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        let ifindex = link.header.index;
                        // Pod MACs learned behind it go with it.
                        let _ = crate::forget_ports(&pin_dir, Some(ifindex));
                        if let Ok(true) = detach(&pin_dir, ifindex) {
                            on_event(WatchEvent::Detached { ifindex });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
