//! Heap allocations on the worker threads per message, counted by this test's own global
//! allocator: after warm-up, an echoed message (raw, and JSON with flat or nested data) must
//! cost none, and so must a delivery to a subscriber that keeps up and a subscribe or
//! unsubscribe of a topic that stays; a publish costs a few, whatever its audience. The figures are printed (`cargo test --test alloc -- --nocapture`).
//!
//! Only allocations made on threads named `corecast-w*` (the workers) are counted; the test's
//! client threads, the acceptor and the control thread allocate as they like.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use common::*;
use serde_json::json;
use tungstenite::Message;

struct Counting;

static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not known yet; 1: a worker; 2: another thread; 3: finding out (re-entered).
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn on_worker() -> bool {
    ROLE.with(|r| match r.get() {
        1 => true,
        0 => {
            r.set(3);
            let w = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("corecast-w"));
            r.set(if w { 1 } else { 2 });
            w
        }
        _ => false,
    })
}

// SAFETY: every call goes straight to the system allocator; the count is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            WORKER_ALLOCS.fetch_add(1, Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            WORKER_ALLOCS.fetch_add(1, Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_worker() {
            WORKER_ALLOCS.fetch_add(1, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The count is process-wide, so the tests take turns: one server's workers at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Worker allocations per operation: `round` (`per_round` operations) is run `warm` times,
/// then `rounds` times counted.
fn allocs_per(per_round: usize, warm: usize, rounds: usize, mut round: impl FnMut()) -> f64 {
    for _ in 0..warm {
        round();
    }
    let before = WORKER_ALLOCS.load(Relaxed);
    for _ in 0..rounds {
        round();
    }
    let n = WORKER_ALLOCS.load(Relaxed) - before;
    n as f64 / (per_round * rounds) as f64
}

/// Round trips of `depth` messages in flight at once (so that replies are batched as under
/// load); returns the worker allocations per message over the `rounds` after `warm` ones.
fn per_message(
    client: &mut Client,
    msg: &Message,
    depth: usize,
    warm: usize,
    rounds: usize,
) -> f64 {
    allocs_per(depth, warm, rounds, || {
        for _ in 0..depth {
            client.write(msg.clone()).expect("send");
        }
        client.flush().expect("flush");
        for _ in 0..depth {
            match client.read().expect("read") {
                Message::Text(_) | Message::Binary(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
}

#[test]
fn an_echoed_message_costs_the_worker_no_allocation() {
    let _turn = serial();
    let server = start(config(1));
    let addr = server.local_addr();

    let mut raw = connect(addr, "/echo");
    let text = Message::text("x".repeat(32));
    let raw_text = per_message(&mut raw, &text, 16, 200, 2000);
    let binary = Message::binary(vec![7u8; 512]);
    let raw_binary = per_message(&mut raw, &binary, 16, 200, 2000);

    let mut js = connect(addr, "/ws");
    let echo = Message::text(json!({"op":"echo","id":1,"data":{"s":"abc","n":1.5}}).to_string());
    let json_echo = per_message(&mut js, &echo, 16, 200, 2000);
    // `data` nested two deep: serde_json would keep the enclosing brackets in a scratch `Vec`
    // as it skipped the value (one allocation per message); the envelope scanner keeps them
    // in a bit stack on the thread's stack.
    let nested = Message::text(json!({"op":"echo","id":1,"data":{"n":[1,2,3]}}).to_string());
    let json_nested = per_message(&mut js, &nested, 16, 200, 2000);
    // A publish to a topic nobody follows, acknowledged for its id. Printed, not asserted:
    // the frame is encoded once per publish whether or not anyone receives it, which costs
    // three (the topic's `Arc<str>` for the delivery's target, the frame's `Vec`, the header
    // `Bytes` puts on a `Vec` with spare capacity), and a turn's run of publishes to one
    // topic is merged into one buffer before its subscribers are looked up (1/16 here).
    let publish = Message::text(
        json!({"op":"publish","id":1,"topic":"nobody","data":{"n":[1,2,3]}}).to_string(),
    );
    let json_publish = per_message(&mut js, &publish, 16, 200, 2000);

    eprintln!(
        "worker allocations per message: raw text {raw_text:.3}, raw binary {raw_binary:.3}, \
         JSON echo {json_echo:.3}, JSON echo of nested data {json_nested:.3}, \
         JSON publish of nested data to no subscriber {json_publish:.3}"
    );
    assert_eq!(raw_text, 0.0, "raw text echo allocates");
    assert_eq!(raw_binary, 0.0, "raw binary echo allocates");
    assert_eq!(json_echo, 0.0, "JSON echo allocates");
    assert_eq!(json_nested, 0.0, "JSON echo of nested data allocates");
    server.shutdown().unwrap();
}

/// Worker allocations per published message with `subs` subscribers on the same worker as
/// the publisher, each reading every message; after warm-up.
fn per_publish(addr: std::net::SocketAddr, topic: &str, subs: usize) -> f64 {
    let mut readers: Vec<Client> = (0..subs)
        .map(|_| {
            let mut c = connect(addr, "/ws");
            let req = json!({"op":"subscribe","topic":topic}).to_string();
            c.send(Message::text(req)).expect("subscribe");
            match c.read().expect("ok") {
                Message::Text(t) => assert!(t.contains(r#""op":"ok""#), "{t}"),
                other => panic!("unexpected {other:?}"),
            }
            c
        })
        .collect();
    let mut publisher = connect(addr, "/ws");
    let msg = Message::text(json!({"op":"publish","topic":topic,"data":{"n":1}}).to_string());
    let depth = 8;
    allocs_per(depth, 50, 300, || {
        for _ in 0..depth {
            publisher.write(msg.clone()).expect("publish");
        }
        publisher.flush().expect("flush");
        for r in readers.iter_mut() {
            for _ in 0..depth {
                match r.read().expect("delivery") {
                    Message::Text(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    })
}

#[test]
fn a_delivery_to_a_subscriber_that_keeps_up_costs_no_allocation() {
    let _turn = serial();
    let server = start(config(1));
    let addr = server.local_addr();
    let few = per_publish(addr, "alloc-few", 5);
    let many = per_publish(addr, "alloc-many", 50);
    let per_delivery = (many - few) / 45.0;
    eprintln!(
        "worker allocations per publish: {few:.3} with 5 subscribers, {many:.3} with 50 \
         ({per_delivery:.4} per delivery)"
    );
    // What a publish costs once (the encoded frame and its shared handle) does not depend on
    // the audience; a delivery must add nothing. Queueing a frame per subscriber costs its
    // queue's allocations, which this difference would show ten times over.
    assert!(
        many - few < 0.1,
        "deliveries allocate: {few:.3} per publish with 5 subscribers, {many:.3} with 50"
    );
    assert!(few <= 4.0, "a publish costs {few:.3} allocations");

    // Subscribing to a topic that exists here and unsubscribing again: the index and the
    // connection's list keep their capacity, and the `ok`s are corked.
    let mut keeper = connect(addr, "/ws");
    keeper
        .send(Message::text(
            json!({"op":"subscribe","topic":"kept"}).to_string(),
        ))
        .unwrap();
    keeper.read().unwrap();
    let mut churn = connect(addr, "/ws");
    let sub = Message::text(json!({"op":"subscribe","id":1,"topic":"kept"}).to_string());
    let unsub = Message::text(json!({"op":"unsubscribe","id":2,"topic":"kept"}).to_string());
    let churned = allocs_per(2, 100, 1000, || {
        churn.write(sub.clone()).unwrap();
        churn.write(unsub.clone()).unwrap();
        churn.flush().unwrap();
        churn.read().unwrap();
        churn.read().unwrap();
    });
    eprintln!("worker allocations per subscribe or unsubscribe of a kept topic: {churned:.3}");
    assert_eq!(churned, 0.0, "subscribing to a kept topic allocates");
    server.shutdown().unwrap();
}

/// The same across workers: with two, half the subscribers are on the other worker, so each
/// publish is also queued to it, numbered, counted as taken and retired from the publisher's
/// account there (`worker::share`); none of that may allocate per delivery, nor per publish
/// once warm (an account closed at zero keeps its map's room for the next).
#[test]
fn a_delivery_on_another_worker_costs_no_allocation() {
    let _turn = serial();
    let server = start(config(2));
    let addr = server.local_addr();
    let few = per_publish(addr, "alloc-few", 5);
    let many = per_publish(addr, "alloc-many", 50);
    eprintln!(
        "two workers: worker allocations per publish: {few:.3} with 5 subscribers, {many:.3} \
         with 50 ({:.4} per delivery)",
        (many - few) / 45.0
    );
    assert!(
        many - few < 0.1,
        "deliveries allocate: {few:.3} per publish with 5 subscribers, {many:.3} with 50"
    );
    assert!(few <= 4.0, "a publish costs {few:.3} allocations");
    server.shutdown().unwrap();
}
