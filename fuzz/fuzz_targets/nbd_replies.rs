//! The NBD client's parsers over whatever a server may send: the fixed
//! newstyle handshake (greeting, replies to NBD_OPT_GO, NBD_INFO payloads)
//! and then simple replies matched against requests in flight. Nothing may
//! panic or allocate more than the client asked for; what the handshake
//! accepts has block sizes within the protocol's rules.
//!
//! Input: byte 0 picks the export name's length (0..=15 bytes of "x");
//! the rest is the server's byte stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mdfuse::io::nbd::proto::{self, BlockSizes};
use std::io::{Cursor, Read, Write};

struct Duplex<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Requests in flight: cookie 1..=6 with these read lengths (0: not a read).
const IN_FLIGHT: [u32; 6] = [0, 512, 4096, 0, 65536, 1];

fuzz_target!(|data: &[u8]| {
    let Some((&first, server)) = data.split_first() else {
        return;
    };
    let export = "x".repeat(usize::from(first & 15));
    let mut s = Duplex {
        input: Cursor::new(server),
    };
    match proto::handshake(&mut s, &export) {
        Ok(e) => {
            assert!(BlockSizes::checked(e.block.min, e.block.preferred, e.block.max).is_ok());
            assert!(e.block.max_request() >= e.block.min);
            assert!(e.block.max_request() <= proto::MAX_PAYLOAD);
            assert!(e.flags & proto::TFLAG_HAS_FLAGS != 0);
        }
        Err(_) => {
            // Parse the same stream as transmission replies: a client
            // that gets here reads replies from whatever follows.
            s.input.set_position(0);
        }
    }
    for _ in 0..64 {
        let lookup = |c: u64| {
            usize::try_from(c)
                .ok()
                .and_then(|c| c.checked_sub(1))
                .and_then(|i| IN_FLIGHT.get(i).copied())
        };
        match proto::read_simple_reply(&mut s.input, lookup, |_| Vec::new()) {
            Ok((reply, d)) => {
                let want = lookup(reply.cookie).expect("matched");
                assert!(d.len() == want as usize || (reply.error != 0 && d.is_empty()) || want == 0);
                let _ = proto::errno_of(reply.error);
            }
            Err(_) => break,
        }
    }
});
