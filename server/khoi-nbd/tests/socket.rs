//! End-to-end tests over real sockets with the raw test client.

// Test arithmetic stays far below 4 GiB.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{RawClient, Reply, start};
use khoi_nbd::wire::{
    ChunkPayload, Command, Errno, OptionCode, OptionRepr, ReplyType, command_flags as cf,
    state_flags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_flush_trim_zero_simple_replies() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "seat/a", false).await;
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 255) as u8).collect();
    c.request(Command::Write, cf::FUA, 1, 4096, 65536, &data)
        .await;
    assert_eq!(c.simple_status(1).await, Errno::Ok);
    assert_eq!(c.read_simple(2, 4096, 65536).await, data);
    c.request(Command::Flush, 0, 3, 0, 0, &[]).await;
    assert_eq!(c.simple_status(3).await, Errno::Ok);
    c.request(Command::Trim, 0, 4, 4096, 4096, &[]).await;
    assert_eq!(c.simple_status(4).await, Errno::Ok);
    c.request(Command::WriteZeroes, cf::FAST_ZERO, 5, 8192, 4096, &[])
        .await;
    assert_eq!(c.simple_status(5).await, Errno::Ok);
    c.request(Command::WriteZeroes, cf::NO_HOLE, 6, 12288, 100, &[])
        .await;
    assert_eq!(c.simple_status(6).await, Errno::Ok);
    let back = c.read_simple(7, 4096, 65536).await;
    let mut expect = data.clone();
    expect[..8192].fill(0);
    expect[8192..8192 + 100].fill(0);
    assert_eq!(back, expect);
    c.request(Command::Cache, 0, 8, 0, 4096, &[]).await;
    assert_eq!(c.simple_status(8).await, Errno::Ok);
    c.request(Command::Disc, 0, 9, 0, 0, &[]).await;
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest).await.expect("server closes");
    assert!(rest.is_empty());
    let snap = srv.stats.snapshot();
    assert!(snap.bytes_written >= 65536 && snap.bytes_read >= 2 * 65536);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_reads_holes_and_block_status() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "seat/a", true).await;
    c.request(Command::Write, 0, 1, 8192, 4096, &[0x5a; 4096])
        .await;
    assert_eq!(c.simple_status(1).await, Errno::Ok);

    let (data, chunks) = c.read_structured(2, 0, 16384).await;
    assert_eq!(chunks, 3, "hole, data, hole");
    assert!(data[..8192].iter().all(|&b| b == 0));
    assert!(data[8192..12288].iter().all(|&b| b == 0x5a));
    assert!(data[12288..].iter().all(|&b| b == 0));

    c.request(Command::BlockStatus, 0, 3, 0, 16384, &[]).await;
    let r = c.reply().await;
    let ch = r.chunk();
    assert!(ch.done);
    let ChunkPayload::BlockStatus {
        context_id,
        descriptors,
    } = ch.payload
    else {
        panic!("block status chunk expected: {ch:?}")
    };
    assert_eq!(context_id, 1);
    let d: Vec<(u32, u32)> = descriptors.iter().map(|d| (d.length, d.flags)).collect();
    let hz = state_flags::HOLE | state_flags::ZERO;
    assert_eq!(d, vec![(8192, hz), (4096, 0), (4096, hz)]);

    c.request(Command::BlockStatus, cf::REQ_ONE, 4, 0, 16384, &[])
        .await;
    let r = c.reply().await;
    let ChunkPayload::BlockStatus { descriptors, .. } = r.chunk().payload else {
        panic!("block status chunk expected")
    };
    assert_eq!(descriptors.len(), 1);

    // DF: one data chunk even across holes.
    c.request(Command::Read, cf::DF, 5, 0, 16384, &[]).await;
    let r = c.reply().await;
    let ch = r.chunk();
    assert!(ch.done);
    assert!(matches!(
        ch.payload,
        ChunkPayload::OffsetData {
            offset: 0,
            data_len: 16384
        }
    ));
    assert!(r.chunk_data()[8192..12288].iter().all(|&b| b == 0x5a));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_connection_continues() {
    let srv = start().await;
    for structured in [false, true] {
        let mut c = RawClient::connect(srv.addr, "seat/a", structured).await;
        let size = common::MEM_SIZE;
        // Out of range read and write.
        c.request(Command::Read, 0, 1, size - 512, 1024, &[]).await;
        assert_eq!(c.simple_status(1).await, Errno::Inval);
        c.request(Command::Write, 0, 2, size, 512, &[1; 512]).await;
        assert_eq!(c.simple_status(2).await, Errno::NoSpc);
        // Oversized read, and an oversized write whose payload is skipped.
        c.request(Command::Read, 0, 3, 0, (32 << 20) + 1, &[]).await;
        assert_eq!(c.simple_status(3).await, Errno::Inval);
        let big = vec![7u8; (32 << 20) + 4096];
        c.request(
            Command::Write,
            0,
            4,
            0,
            u32::try_from(big.len()).expect("fits"),
            &big,
        )
        .await;
        assert_eq!(c.simple_status(4).await, Errno::Inval);
        // Unknown command, unknown flag, offset overflow.
        c.request(Command::Unknown(99), 0, 5, 0, 512, &[]).await;
        assert_eq!(c.simple_status(5).await, Errno::Inval);
        c.request(Command::Read, 1 << 12, 6, 0, 512, &[]).await;
        assert_eq!(c.simple_status(6).await, Errno::Inval);
        c.request(Command::Read, 0, 7, u64::MAX - 10, 512, &[])
            .await;
        assert_eq!(c.simple_status(7).await, Errno::Inval);
        // Still alive.
        let data = if structured {
            c.read_structured(8, 0, 512).await.0
        } else {
            c.read_simple(8, 0, 512).await
        };
        assert_eq!(data.len(), 512);
        if !structured {
            // BLOCK_STATUS without a negotiated context.
            c.request(Command::BlockStatus, 0, 9, 0, 512, &[]).await;
            assert_eq!(c.simple_status(9).await, Errno::Inval);
        }
    }
    // Writes to a read-only export.
    let mut c = RawClient::connect(srv.addr, "seat/ro", false).await;
    c.request(Command::Write, 0, 1, 0, 512, &[1; 512]).await;
    assert_eq!(c.simple_status(1).await, Errno::Perm);
    assert_eq!(c.read_simple(2, 0, 512).await, vec![0; 512]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_magic_closes_only_that_connection() {
    let srv = start().await;
    let mut good = RawClient::connect(srv.addr, "seat/a", false).await;
    let mut bad = RawClient::connect(srv.addr, "seat/a", false).await;
    bad.s.write_all(&[0xffu8; 28]).await.expect("send garbage");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), bad.s.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(n.is_err() || rest.is_empty(), "no reply to garbage");
    assert_eq!(good.read_simple(1, 0, 4096).await.len(), 4096);
    // New connections are still accepted.
    let mut again = RawClient::connect(srv.addr, "seat/a", true).await;
    assert_eq!(again.read_structured(1, 0, 4096).await.0.len(), 4096);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_all_answered() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "seat/a", true).await;
    // Fire writes and reads without waiting; replies may come in any order.
    let n = 64u64;
    for i in 0..n {
        let buf = vec![u8::try_from(i).expect("small"); 4096];
        c.request(Command::Write, 0, 1000 + i, i * 4096, 4096, &buf)
            .await;
    }
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = c.reply().await;
        let cookie = r.cookie();
        assert!(
            matches!(
                r,
                Reply::Simple {
                    error: Errno::Ok,
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(seen.insert(cookie));
    }
    assert_eq!(seen.len() as u64, n);
    for i in 0..n {
        c.request(Command::Read, 0, 2000 + i, i * 4096, 4096, &[])
            .await;
    }
    let mut seen = HashSet::new();
    for _ in 0..n {
        let r = c.reply().await;
        let ch = r.chunk();
        assert!(ch.done);
        let i = ch.cookie - 2000;
        assert!(r.chunk_data().iter().all(|&b| u64::from(b) == i));
        seen.insert(ch.cookie);
    }
    assert_eq!(seen.len() as u64, n);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_reads_via_sendfile() {
    let srv = start().await;
    let mut simple = RawClient::connect(srv.addr, "golden", false).await;
    let mut structured = RawClient::connect(srv.addr, "golden", true).await;
    for (off, len) in [(0u64, 4096u32), (12345, 777), (1 << 20, 2 << 20)] {
        let want = &srv.golden[off as usize..off as usize + len as usize];
        assert_eq!(simple.read_simple(1, off, len).await, want);
        let (got, chunks) = structured.read_structured(2, off, len).await;
        assert_eq!(chunks, 1);
        assert_eq!(got, want);
    }
    // Read-only: writes refused, reads still fine.
    simple
        .request(Command::Write, 0, 3, 0, 512, &[0; 512])
        .await;
    assert_eq!(simple.simple_status(3).await, Errno::Perm);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_over_the_socket() {
    let srv = start().await;
    let mut c = RawClient::connect_raw(srv.addr).await;
    c.option(OptionRepr::Other {
        code: OptionCode::Unknown(4242),
        data: b"",
    })
    .await;
    let r = c.option_replies().await;
    assert_eq!(r[0].1, ReplyType::ErrUnsup);
    c.option(OptionRepr::List).await;
    let r = c.option_replies().await;
    // One SERVER reply per export of `start()` (five), then the ACK.
    assert_eq!(r.len(), 6);
    c.option(OptionRepr::ExportName(b"seat/a")).await;
    let mut reply = [0u8; 10];
    c.s.read_exact(&mut reply).await.expect("export reply");
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().expect("8")),
        common::MEM_SIZE
    );
    assert_eq!(c.read_simple(1, 0, 512).await, vec![0; 512]);

    // Absurd option length: ERR_TOO_BIG, then the server hangs up.
    let mut c = RawClient::connect_raw(srv.addr).await;
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(b"IHAVEOPT");
    hdr[8..12].copy_from_slice(&7u32.to_be_bytes());
    hdr[12..].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    c.s.write_all(&hdr).await.expect("send header");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("clean close");
    assert_eq!(rest.len(), 20 + "option too long".len());
    assert_eq!(&rest[12..16], &(0x8000_0009u32).to_be_bytes());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_connections() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "seat/a", false).await;
    assert_eq!(c.read_simple(1, 0, 512).await.len(), 512);
    assert_eq!(srv.stats.snapshot().connections_active, 1);
    let stats = srv.stats.clone();
    srv.stop().await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest))
        .await
        .expect("closed after shutdown");
    assert_eq!(stats.snapshot().connections_active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_errors_reach_the_client_and_the_connection_carries_on() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "faulty", false).await;
    // A read the device fails with EIO: an EIO reply, no data, no hang-up.
    c.request(Command::Read, 0, 1, common::FAULTY_EIO.start, 4096, &[])
        .await;
    assert_eq!(c.simple_status(1).await, Errno::Io);
    // A write where the overlay is full: ENOSPC, and the write is not applied.
    let at = common::FAULTY_FULL.start;
    c.request(Command::Write, 0, 2, at, 4096, &[0xee; 4096])
        .await;
    assert_eq!(c.simple_status(2).await, Errno::NoSpc);
    c.request(Command::WriteZeroes, 0, 3, at, 4096, &[]).await;
    assert_eq!(c.simple_status(3).await, Errno::NoSpc);
    // Elsewhere the same connection still works.
    c.request(Command::Write, 0, 4, 65536, 4096, &[0x11; 4096])
        .await;
    assert_eq!(c.simple_status(4).await, Errno::Ok);
    assert_eq!(c.read_simple(5, 65536, 4096).await, vec![0x11; 4096]);
    assert_eq!(c.read_simple(6, at, 4096).await, vec![0; 4096]);
    assert!(srv.stats.snapshot().errors >= 3);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_write_does_not_hold_back_a_later_read() {
    let srv = start().await;
    let mut c = RawClient::connect(srv.addr, "slow", false).await;
    // A large write goes to the blocking pool and takes SLOW_WRITE there; a
    // read sent after it runs inline and its reply overtakes the write's
    // (NBD matches replies by cookie).
    let t = std::time::Instant::now();
    c.request(Command::Write, 0, 1, 0, 128 << 10, &vec![7u8; 128 << 10])
        .await;
    c.request(Command::Read, 0, 2, 1 << 19, 4096, &[]).await;
    match c.reply().await {
        Reply::Simple { error, cookie } => {
            assert_eq!(
                (cookie, error),
                (2, Errno::Ok),
                "the read's reply comes first"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.read_data(4096).await, vec![0; 4096]);
    assert!(t.elapsed() < common::SLOW_WRITE, "the read did not wait");
    match c.reply().await {
        Reply::Simple { error, cookie } => assert_eq!((cookie, error), (1, Errno::Ok)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(t.elapsed() >= common::SLOW_WRITE);
    srv.stop().await;
}
