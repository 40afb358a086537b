//! One integration-test binary for every privileged test. Each module builds
//! its own node namespace through the harness and cleans it up on drop.
mod cni;
mod datapath;
mod dns;
mod image;
mod kube;
mod lb;
mod remote_backends;
mod routing;
mod semantics;
mod socklb;
