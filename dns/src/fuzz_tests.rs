//! Property tests over the request path (the CI-bounded fuzz target): any
//! bytes, and mutations of valid queries, must produce either nothing or a
//! well-formed response that echoes the ID — never a panic — and a valid
//! query must keep getting the right answer afterwards.

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;

use crate::answer::{answer_fast, Fast, Transport};
use crate::zone::tests::{fixture_zone, query_bytes};

fn check(msg: &[u8]) {
    let zone = fixture_zone(true);
    for t in [Transport::Udp, Transport::Tcp] {
        let mut out = Vec::new();
        match answer_fast(&zone, true, msg, t, &mut out) {
            Fast::Drop => assert!(msg.len() < 12 || msg[2] & 0x80 != 0, "only short packets and responses are dropped"),
            Fast::Slow(_) => {}
            Fast::Done { .. } => {
                assert!(out.len() >= 12);
                assert_eq!(out[..2], msg[..2], "ID echoed");
                if t == Transport::Udp {
                    assert!(out.len() <= crate::wire::MAX_UDP_PAYLOAD as usize);
                }
                let m = Message::from_vec(&out).expect("our answers always decode");
                assert_eq!(m.metadata.message_type, MessageType::Response);
            }
        }
    }
}

fn valid_queries() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "web.default.svc.cluster.local.",
        "_pg._tcp.db.prod.svc.cluster.local.",
        "db-0.db.prod.svc.cluster.local.",
        "10.0.96.10.in-addr.arpa.",
        "cluster.local.",
        "nosuch.svc.cluster.local.",
        "10-1-2-3.x.pod.cluster.local.",
        "ext.default.svc.cluster.local.",
    ]);
    let types = prop::sample::select(vec![
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::CNAME,
        RecordType::TXT,
    ]);
    (names, types, any::<bool>()).prop_map(|(n, t, e)| query_bytes(n, t, e.then_some(1232)))
}

proptest! {
    // Bounded for CI: a few hundred cases per property, well under a second.
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(msg in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&msg);
    }

    #[test]
    fn mutated_queries_never_panic(
        q in valid_queries(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut msg = q.clone();
        for (i, b) in flips {
            let i = i.index(msg.len());
            msg[i] = b;
        }
        if truncate {
            msg.truncate(cut.index(msg.len() + 1));
        }
        check(&msg);
    }

    #[test]
    fn valid_queries_answer_well(q in valid_queries()) {
        check(&q);
    }
}
