//! PostgreSQL-only tests: connecting, migrating, and what several servers
//! sharing one database rely on. The interface's own promises are tested
//! on both backends in `store::tests`.

use super::*;
use crate::store::tests::{Kind, Place, new_flow_run};

fn place() -> Option<String> {
    match Place::new(Kind::Postgres)? {
        Place::Postgres(url) => Some(url),
        Place::Sqlite(_) => unreachable!(),
    }
}

#[test]
fn a_bad_url_or_an_unreachable_server_is_one_clear_line_not_a_hang() {
    let started = std::time::Instant::now();
    let Err(e) = PostgresStore::open("mysql://nobody@nowhere") else {
        panic!("a MySQL URL was accepted");
    };
    assert!(e.to_string().contains("not a PostgreSQL URL"), "{e}");
    // A port nobody listens on: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://weir:hunter2@127.0.0.1:{port}/weir");
    let Err(e) = PostgresStore::open(&url) else {
        panic!("nobody listens on {port}, yet it connected");
    };
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "the password was shown: {text}");
    assert!(!text.contains('\n'), "not one line: {text}");
    // Bounded by the connect timeout, never a hang (printed, not asserted).
    eprintln!("refused in {:?}", started.elapsed());
}

#[test]
fn servers_starting_at_once_migrate_once() {
    let Some(url) = place() else {
        return;
    };
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(|_| ()))
        })
        .collect();
    for thread in opened {
        thread.join().unwrap().unwrap();
    }
}

#[test]
fn two_writers_compare_and_set_one_run_and_exactly_one_wins() {
    let Some(url) = place() else {
        return;
    };
    let (a, b) = (
        PostgresStore::open(&url).unwrap(),
        PostgresStore::open(&url).unwrap(),
    );
    let id = FlowRunId::new();
    a.submit(vec![new_flow_run(id)]).wait_blocking().unwrap();
    for round in 0..50 {
        // Each server tries to move the run from its current state; the
        // loser must see a conflict, never a second success.
        let from = a.flow_run(id).unwrap().state;
        let to = if round % 2 == 0 {
            RunState::Cancelling
        } else {
            RunState::Running
        };
        let change = StateChange::new(id.0, from, to, round + 2);
        let (ta, tb) = (
            a.submit(vec![Write::FlowRunState(change.clone())]),
            b.submit(vec![Write::FlowRunState(change)]),
        );
        let outcomes = [ta.wait_blocking(), tb.wait_blocking()];
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(StoreError::Conflict { .. }))),
            "{outcomes:?}"
        );
    }
}

#[test]
fn the_admission_lock_has_one_holder_across_servers_and_a_dead_holder_frees_it() {
    let Some(url) = place() else {
        return;
    };
    let (a, b) = (
        PostgresStore::open(&url).unwrap(),
        PostgresStore::open(&url).unwrap(),
    );
    let held = a.lock_admission().unwrap();
    let (got, waiting) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let lock = b.lock_admission();
        let _ = got.send(());
        (b, lock.map(|_| ()))
    });
    assert!(
        waiting
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "the second server took the lock while the first held it"
    );
    drop(held);
    waiting
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the second server never got the lock after it was released");
    let (b, lock) = other.join().unwrap();
    lock.unwrap();

    // Leadership: the first to ask leads until its connection ends.
    let c = PostgresStore::open(&url).unwrap();
    assert!(b.leads(Role::Scheduler).unwrap(), "b asked first");
    assert!(!c.leads(Role::Scheduler).unwrap(), "b still leads");
    assert!(b.leads(Role::Scheduler).unwrap(), "asking again keeps it");
    assert!(c.leads(Role::Outbox).unwrap(), "roles are separate");
    drop(b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.leads(Role::Scheduler).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "nobody took over after the leader went away"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
