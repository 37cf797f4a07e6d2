//! The process group and the gradient reduction, with the ranks of a job as threads of
//! this test process (c10d does not mind: each rank has its own store client and Gloo
//! context). Nothing here touches libtorch's generator or other process-wide state.

use std::collections::HashMap;
use std::time::Duration;

use tch::{Kind, Tensor};

use super::*;

/// A port nobody listens on now (the OS's pick; released before the store binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn world(rank: usize, size: usize, port: u16) -> World {
    World {
        rank,
        size,
        local_rank: rank,
        local_size: size,
        master_addr: "127.0.0.1".to_string(),
        master_port: port,
        agent_store: false,
        gloo_interfaces: Vec::new(),
        restart_count: 0,
    }
}

/// Runs `body(parallel)` on `size` ranks (threads) of one job; returns their results in
/// rank order.
fn on_ranks<T: Send>(size: usize, body: impl Fn(Parallel) -> T + Sync) -> Vec<T> {
    let port = free_port();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let body = &body;
                scope.spawn(move || {
                    let parallel = Parallel::connect(
                        &world(rank, size, port),
                        Duration::from_secs(20),
                        tch::Device::Cpu,
                    )
                    .unwrap();
                    body(parallel)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

#[test]
fn the_environment_describes_the_world_or_says_what_is_wrong() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(move |name| map.get(name).cloned())
    };
    assert_eq!(vars(&[]).unwrap(), None, "no WORLD_SIZE: one process");
    let err = vars(&[("RANK", "1")]).unwrap_err().to_string();
    assert!(err.contains("RANK=1 is set but WORLD_SIZE is not"), "{err}");
    assert_eq!(vars(&[("WORLD_SIZE", "1")]).unwrap(), None);
    let full = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];
    let w = vars(&full).unwrap().unwrap();
    assert_eq!((w.rank, w.size, w.local_rank, w.local_size), (3, 4, 1, 2));
    assert_eq!((w.master_addr.as_str(), w.master_port), ("node0", 29500));
    assert!(w.agent_store);
    let r = w.rendezvous(DEFAULT_TIMEOUT, tch::Device::Cpu);
    assert_eq!(r.backend, Backend::Gloo);
    assert!(
        !r.host_store,
        "under an agent store rank 3 (and rank 0) connect"
    );
    assert_eq!(r.prefix, "/worker/attempt_2/elbo/");
    assert_eq!(w.device(tch::Device::Cuda(0)), tch::Device::Cuda(1));
    let on_gpu = w.rendezvous(DEFAULT_TIMEOUT, tch::Device::Cuda(0)).backend;
    if NCCL {
        assert_eq!(on_gpu, Backend::Nccl { device: 1 }, "LOCAL_RANK's GPU");
    } else {
        assert_eq!(
            on_gpu,
            Backend::Gloo,
            "without NCCL, Gloo through CPU copies"
        );
    }
    assert_eq!(w.device(tch::Device::Cpu), tch::Device::Cpu);
    // The variables a launcher sets describe the same world.
    let back: Vec<(String, String)> = w
        .vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let again =
        World::from_vars(|name| back.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap()
            .unwrap();
    assert_eq!((again.rank, again.size, again.local_rank), (3, 4, 1));

    let err = |pairs: &[(&str, &str)]| vars(pairs).unwrap_err().to_string();
    assert!(err(&[("WORLD_SIZE", "2")]).contains("RANK is not set"));
    assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
    assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("RANK=2 is not below"));
    let no_port = err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "h")]);
    assert!(no_port.contains("MASTER_PORT is not set"), "{no_port}");
    let bad_port = err(&[
        ("WORLD_SIZE", "2"),
        ("RANK", "0"),
        ("MASTER_ADDR", "h"),
        ("MASTER_PORT", "70000"),
    ]);
    assert!(bad_port.contains("not a port"), "{bad_port}");
}

#[test]
fn all_reduce_sums_and_a_share_of_a_half_averages() {
    let out = on_ranks(2, |p| {
        let r = p.rank() as f32;
        let t = Tensor::from_slice(&[1.0 + r, 10.0 * r, -2.0]);
        p.group().all_reduce_sum(std::slice::from_ref(&t)).unwrap();
        let summed = values(&t);
        // The gradient reduction with share 1/2: the mean of the two gradients.
        let w = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        (&w * Tensor::from_slice(&[1.0 + r, 3.0 * r]))
            .sum(Kind::Float)
            .backward();
        let mut shared = [r as f64, 1.0];
        p.reduce(std::slice::from_ref(&w), 0.5, &mut shared)
            .unwrap();
        (summed, values(&w.grad()), shared)
    });
    for (summed, grad, shared) in out {
        assert_eq!(summed, vec![3.0, 10.0, -4.0]);
        assert_eq!(grad, vec![1.5, 1.5], "(1 + 2) / 2 and (0 + 3) / 2");
        assert_eq!(shared, [1.0, 2.0], "shared values are summed, not weighted");
    }
}

#[test]
fn buckets_of_mixed_sizes_and_a_missing_gradient_reduce_to_the_mean() {
    // Five parameters of 3, 1, 40, 2 and 5 elements in 32-byte buckets: [0 1] [2] [3] [4]
    // (the 160-byte one alone). Rank 1 does not use parameter 3 (no gradient there) and
    // no rank uses parameter 4.
    let shapes: [&[i64]; 5] = [&[3], &[1], &[4, 10], &[2], &[5]];
    let out = on_ranks(2, |p| {
        let p = p.with_bucket_bytes(32);
        let r = p.rank() as f64;
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::zeros(*s, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
            .collect();
        let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (i, w) in params.iter().enumerate().take(4) {
            if i == 3 && p.rank() == 1 {
                continue;
            }
            let k = (i + 1) as f64 * (1.0 + r);
            loss += (w * k).sum(Kind::Float);
        }
        loss.backward();
        let mut shared = [];
        p.reduce(&params, 0.5, &mut shared).unwrap();
        params
            .iter()
            .map(|w| w.grad())
            .map(|g| g.defined().then(|| values(&g)))
            .collect::<Vec<_>>()
    });
    for grads in out {
        for (i, g) in grads.iter().enumerate().take(3) {
            // Rank 0's gradient is (i + 1), rank 1's 2 (i + 1): the mean is 1.5 (i + 1).
            let expected = 1.5 * (i + 1) as f32;
            let g = g.as_ref().unwrap();
            assert!(g.iter().all(|&v| v == expected), "parameter {i}: {g:?}");
        }
        assert_eq!(
            grads[3],
            Some(vec![2.0, 2.0]),
            "(4 + 0) / 2: set where it was missing"
        );
        assert_eq!(grads[4], None, "no rank had a gradient: it stays undefined");
    }
}

#[test]
fn broadcast_gives_every_rank_the_state_of_rank_0_and_disagreement_is_named() {
    let out = on_ranks(3, |p| {
        let r = p.rank() as f32;
        let state = [Tensor::from_slice(&[r, r]), Tensor::from_slice(&[5.0 * r])];
        p.broadcast_from_root(&state).unwrap();
        let explain = |root: &str| format!("rank 0 says {root:?}");
        let same = p.same_everywhere("the job", "same text", &explain, "Run the same job");
        let text = if p.rank() == 2 { "other" } else { "same text" };
        let differ = p
            .same_everywhere("the job", text, &explain, "Run the same job")
            .unwrap_err()
            .to_string();
        (
            p.rank(),
            values(&state[0]),
            values(&state[1]),
            same.is_ok(),
            differ,
        )
    });
    for (rank, a, b, same, differ) in out {
        assert_eq!((a, b), (vec![0.0, 0.0], vec![0.0]));
        assert!(same);
        assert!(differ.contains("rank 2 differs from rank 0"), "{differ}");
        // The rank that differs says how, from rank 0's text.
        assert_eq!(
            differ.contains("(rank 2: rank 0 says \"same text\")"),
            rank == 2,
            "{differ}"
        );
    }
}

#[test]
fn a_missing_peer_or_a_taken_port_fails_the_rendezvous_with_where_and_why() {
    // A port someone else holds: rank 0 cannot host the store there.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Parallel::connect(&world(0, 2, port), Duration::from_secs(2), tch::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("MASTER_PORT={port}")), "{err}");
    assert!(err.contains("rank 0 of 2"), "{err}");
    // Nobody hosts the store: rank 1 gives up after the timeout.
    let port = free_port();
    let started = std::time::Instant::now();
    let err = Parallel::connect(&world(1, 2, port), Duration::from_secs(2), tch::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rendezvous at 127.0.0.1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// The store barrier: every rank returns only once all have arrived (rank 0 arriving
/// last, after the others had long been waiting), it can be held again and again under
/// fresh keys, and a rank that never comes makes the others fail at the timeout, naming
/// the wait and the rank.
#[test]
fn the_store_barrier_waits_for_every_rank_and_times_out_without_one() {
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    let seen = on_ranks(3, |p| {
        let mut seen = Vec::new();
        for round in 0..3 {
            if p.rank() == 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            p.group().store_barrier(Duration::from_secs(20)).unwrap();
            // Past the barrier, every rank of this round has arrived.
            seen.push(arrived.load(std::sync::atomic::Ordering::SeqCst) >= 3 * (round + 1));
            // Everyone reads before anyone arrives at the next round.
            p.barrier(Duration::from_secs(20)).unwrap();
        }
        seen
    });
    assert!(seen.iter().flatten().all(|&ok| ok), "{seen:?}");

    let results = on_ranks(2, |p| {
        if p.rank() == 1 {
            return Ok(());
        }
        p.group().store_barrier(Duration::from_millis(500))
    });
    let err = results[0].clone().unwrap_err();
    assert!(
        err.contains("waiting for the other processes on rank 0 of 2"),
        "{err}"
    );
}

#[test]
fn a_rank_without_a_gpu_of_its_own_is_refused_before_the_rendezvous() {
    assert!(check_gpu(1, 2).is_ok());
    let err = check_gpu(2, 2).unwrap_err().to_string();
    assert!(
        err.contains("cuda:2") && err.contains("has 2 GPU(s)") && err.contains("--nproc"),
        "{err}"
    );
    assert!(!err.contains("  "), "{err}");
}
