//! Data-parallel training on torch's own distributed engine (c10d, Gloo on the CPU): who
//! this process is among its peers ([`World`], read from the torch.distributed env://
//! variables that `elbo train --nproc`, torchrun and cluster launchers set), and the
//! process group that training uses ([`Parallel`]): the gradient all-reduce in buckets,
//! the broadcast of rank 0's state, and the checks that every process runs the same job.
//!
//! The training loop sees the processes it runs in as one value, [`Replicas`]: a
//! data-parallel job ([`Parallel`]) or a single process ([`Alone`], whose collectives
//! do nothing), so the loop itself has no branch on which.
//!
//! Semantics (the README states them): the batch size is the global batch, each rank
//! takes its contiguous slice of every global batch of the shared seeded order; the
//! gradient is the global batch's mean gradient (each rank's gradient weighted by its
//! share of the batch, summed); rank 0 alone writes the run folder; draws inside the model
//! are seeded by (seed, step, rank).

mod reduce;
mod replicas;

use std::time::Duration;

use tch::{Device, Tensor};

pub use crate::sys::c10d::{
    AVAILABLE, Backend, NCCL, ProcessGroup, Rendezvous, UNAVAILABLE, waiting_in,
};
pub use reduce::{DEFAULT_BUCKET_BYTES, buckets};
pub use replicas::{Alone, Replica, Replicas};

use crate::error::{Error, Result};

/// The default timeout of the rendezvous and of every collective: long enough for a
/// checkpoint write between two steps, short enough to notice a lost process.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The variables of the torch.distributed env:// convention, as a launcher sets them.
pub const ENV_VARS: [&str; 6] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// This process's place among the processes of a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Global rank, in `0..size`.
    pub rank: usize,
    /// The number of processes.
    pub size: usize,
    /// The rank among the processes of this node (picks `cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// The number of processes on this node.
    pub local_size: usize,
    /// Where the rendezvous store is.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// The launcher's agent already hosts the store (torchrun sets
    /// `TORCHELASTIC_USE_AGENT_STORE=True`): every rank connects as a client.
    pub agent_store: bool,
    /// The network interfaces Gloo uses (`GLOO_SOCKET_IFNAME`, comma-separated, as
    /// torch.distributed reads it); empty: the interface of the machine's host name.
    /// Machines with several networks (a cluster's fast fabric beside its management
    /// Ethernet, a container's bridge) name the one the other nodes reach.
    pub gloo_interfaces: Vec<String>,
    /// torchrun's `TORCHELASTIC_RESTART_COUNT` (0 otherwise): keys of a restarted
    /// attempt do not meet the old ones.
    pub restart_count: u64,
}

impl World {
    /// The world the environment describes, `None` for a single process (no
    /// `WORLD_SIZE`, or `WORLD_SIZE=1`).
    pub fn from_env() -> Result<Option<World>> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let Some(size) = var("WORLD_SIZE") else {
            // RANK without WORLD_SIZE is a launcher half-configured, not one process.
            if let Some(rank) = var("RANK") {
                return Err(Error::Config {
                    detail: format!(
                        "RANK={rank} is set but WORLD_SIZE is not: a launcher sets both (with \
                         MASTER_ADDR and MASTER_PORT); for one process set neither"
                    ),
                });
            }
            return Ok(None);
        };
        let number = |name: &str, text: &str| -> Result<usize> {
            text.trim().parse::<usize>().map_err(|_| Error::Config {
                detail: format!("{name}={text:?} is not a whole number"),
            })
        };
        let size = number("WORLD_SIZE", &size)?;
        if size == 0 {
            return Err(Error::Config {
                detail: "WORLD_SIZE=0: a job has at least one process".to_string(),
            });
        }
        if size == 1 {
            return Ok(None);
        }
        let needed = |name: &str| {
            var(name).ok_or_else(|| Error::Config {
                detail: format!(
                    "WORLD_SIZE={size} asks for data-parallel training, but {name} is not set: \
                     a launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and \
                     LOCAL_RANK, LOCAL_WORLD_SIZE) for every process"
                ),
            })
        };
        let rank = number("RANK", &needed("RANK")?)?;
        if rank >= size {
            return Err(Error::Config {
                detail: format!("RANK={rank} is not below WORLD_SIZE={size}"),
            });
        }
        let local_size = match var("LOCAL_WORLD_SIZE") {
            Some(text) => number("LOCAL_WORLD_SIZE", &text)?,
            None => size,
        };
        let local_rank = match var("LOCAL_RANK") {
            Some(text) => number("LOCAL_RANK", &text)?,
            None => rank % local_size.max(1),
        };
        if local_rank >= local_size.max(1) {
            return Err(Error::Config {
                detail: format!(
                    "LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_size}"
                ),
            });
        }
        let master_addr = needed("MASTER_ADDR")?;
        let port_text = needed("MASTER_PORT")?;
        let master_port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| Error::Config {
                detail: format!("MASTER_PORT={port_text:?} is not a port (1 to 65535)"),
            })?;
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let restart_count = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(text) => number("TORCHELASTIC_RESTART_COUNT", &text)? as u64,
            None => 0,
        };
        let gloo_interfaces = match var("GLOO_SOCKET_IFNAME") {
            None => Vec::new(),
            Some(text) => {
                let names: Vec<String> = text.split(',').map(|n| n.trim().to_string()).collect();
                if names.iter().any(String::is_empty) {
                    return Err(Error::Config {
                        detail: format!(
                            "GLOO_SOCKET_IFNAME={text:?}: expected network interface names \
                             separated by commas (such as eth0 or eth0,eth1)"
                        ),
                    });
                }
                names
            }
        };
        Ok(Some(World {
            rank,
            size,
            local_rank,
            local_size,
            master_addr,
            master_port,
            agent_store,
            gloo_interfaces,
            restart_count,
        }))
    }

    /// The variables that describe this process to a child (what `--nproc` sets).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
            ("TORCHELASTIC_RESTART_COUNT", self.restart_count.to_string()),
        ]
    }

    /// The rendezvous of this process, for training on `device` (NCCL for a GPU when
    /// this build has it, else Gloo): rank 0 hosts the store unless a launcher's agent
    /// does. Keys go under the prefix torch.distributed uses for the attempt.
    pub fn rendezvous(&self, timeout: Duration, device: Device) -> Rendezvous {
        Rendezvous {
            host: self.master_addr.clone(),
            port: self.master_port,
            rank: self.rank,
            world: self.size,
            host_store: self.rank == 0 && !self.agent_store,
            prefix: format!("/worker/attempt_{}/elbo/", self.restart_count),
            timeout,
            gloo_threads: 2,
            gloo_interfaces: self.gloo_interfaces.clone(),
            backend: match self.device(device) {
                Device::Cuda(index) if NCCL => Backend::Nccl { device: index },
                _ => Backend::Gloo,
            },
        }
    }

    /// The device this process trains on, given the one asked for: `cuda` becomes
    /// `cuda:LOCAL_RANK`.
    pub fn device(&self, asked: Device) -> Device {
        match asked {
            Device::Cuda(_) => Device::Cuda(self.local_rank),
            other => other,
        }
    }
}

/// Refuses a process whose GPU, `cuda:index` (its LOCAL_RANK), is not among the `count`
/// this machine has, before it meets the others: with more processes on a node than
/// GPUs, each would otherwise fail deep inside CUDA ("invalid device ordinal").
pub fn check_gpu(index: usize, count: usize) -> Result<()> {
    if index < count {
        return Ok(());
    }
    Err(Error::Config {
        detail: format!(
            "this process trains on cuda:{index} (its LOCAL_RANK), but this machine has \
             {count} GPU(s): start at most {count} process(es) on this node (--nproc, \
             torchrun --nproc-per-node)"
        ),
    })
}

/// The process group of a data-parallel training job, with what the trainer asks of it.
#[derive(Debug)]
pub struct Parallel {
    group: ProcessGroup,
    bucket_bytes: usize,
}

impl Parallel {
    /// Meets the other processes of `world` to train on `device` (waits up to `timeout`
    /// for all of them; every collective later fails after `timeout` too). On a GPU the
    /// group is NCCL's when this build has it ([`NCCL`]); otherwise Gloo's, through CPU
    /// copies of the tensors.
    pub fn connect(world: &World, timeout: Duration, device: Device) -> Result<Parallel> {
        if let Device::Cuda(index) = world.device(device) {
            check_gpu(
                index,
                usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
            )?;
        }
        let group =
            ProcessGroup::connect(&world.rendezvous(timeout, device)).map_err(|detail| {
                Error::Distributed {
                    detail: format!(
                        "{detail} (MASTER_ADDR={}, MASTER_PORT={}, timeout {} s)",
                        world.master_addr,
                        world.master_port,
                        timeout.as_secs_f64()
                    ),
                }
            })?;
        Ok(Parallel::over(group))
    }

    /// A job over an existing process group.
    pub fn over(group: ProcessGroup) -> Parallel {
        Parallel {
            group,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Gradients are reduced in buckets of at most `bytes` (default 25 MiB, as
    /// PyTorch's DDP).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Parallel {
        self.bucket_bytes = bytes.max(1);
        self
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.group.world()
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// How long the other processes may wait while rank 0 alone works (a test
    /// evaluation, sample pictures): thirty times the timeout.
    pub fn slow_timeout(&self) -> Duration {
        self.group.timeout() * 30
    }

    fn failed(&self, detail: String) -> Error {
        Error::Distributed { detail }
    }

    /// The device of the group's tensors (the CPU for Gloo, this process's GPU for NCCL).
    pub fn device(&self) -> Device {
        self.group.backend().device()
    }

    /// Which ranks report `ok == false`, the same list in every process (one
    /// all-reduce).
    pub fn failing_ranks(&self, ok: bool) -> Result<Vec<usize>> {
        let mut flags = vec![0f32; self.size()];
        flags[self.rank()] = if ok { 0.0 } else { 1.0 };
        let flags = Tensor::from_slice(&flags).to_device(self.device());
        self.group
            .all_reduce_sum(std::slice::from_ref(&flags))
            .map_err(|e| self.failed(e))?;
        let flags = Vec::<f32>::try_from(&flags.to_device(Device::Cpu)).unwrap_or_default();
        Ok(flags
            .iter()
            .enumerate()
            .filter(|(_, f)| **f > 0.0)
            .map(|(r, _)| r)
            .collect())
    }

    /// Checks that every process holds the same `text` (`what` names it in the error,
    /// which ends with the sentence `advice`), naming the ranks that differ from rank 0;
    /// a rank that differs adds what `explain(rank 0's text)` says (the options that
    /// differ, by name).
    pub fn same_everywhere(
        &self,
        what: &str,
        text: &str,
        explain: &dyn Fn(&str) -> String,
        advice: &str,
    ) -> Result<()> {
        let device = self.device();
        let bytes = text.as_bytes();
        let length = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
        self.group
            .broadcast(std::slice::from_ref(&length), 0)
            .map_err(|e| self.failed(e))?;
        let root_length = length.to_device(Device::Cpu).int64_value(&[0]);
        let root = if self.rank() == 0 {
            Tensor::from_slice(bytes).to_device(device)
        } else {
            Tensor::zeros([root_length.max(0)], (tch::Kind::Uint8, device))
        };
        self.group
            .broadcast(std::slice::from_ref(&root), 0)
            .map_err(|e| self.failed(e))?;
        let root_bytes = Vec::<u8>::try_from(&root.to_device(Device::Cpu)).unwrap_or_default();
        let root_text = String::from_utf8_lossy(&root_bytes);
        let same = root_text == text;
        let differ = self.failing_ranks(same)?;
        if differ.is_empty() {
            return Ok(());
        }
        Err(Error::Config {
            detail: format!(
                "the {} processes of this job disagree on {what}: rank{} {} differ{} from \
                 rank 0{}. {advice}",
                self.size(),
                if differ.len() > 1 { "s" } else { "" },
                differ
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if differ.len() > 1 { "" } else { "s" },
                if same {
                    String::new()
                } else {
                    format!(" (rank {}: {})", self.rank(), explain(&root_text))
                },
            ),
        })
    }

    /// Overwrites every tensor with rank 0's, in place (any device; through contiguous
    /// copies on the group's device when needed).
    pub fn broadcast_from_root(&self, tensors: &[Tensor]) -> Result<()> {
        let device = self.device();
        tch::no_grad(|| {
            let in_place = |t: &Tensor| t.device() == device && t.is_contiguous();
            let staged: Vec<Tensor> = tensors
                .iter()
                .map(|t| {
                    if in_place(t) {
                        t.shallow_clone()
                    } else {
                        t.to_device(device).contiguous()
                    }
                })
                .collect();
            self.group
                .broadcast(&staged, 0)
                .map_err(|e| self.failed(e))?;
            for (t, s) in tensors.iter().zip(&staged) {
                if !in_place(t) {
                    t.shallow_clone().copy_(s);
                }
            }
            Ok(())
        })
    }

    /// The sum over processes of each value (one all-reduce of a small f64 tensor).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let t = Tensor::from_slice(values).to_device(self.device());
        self.group
            .all_reduce_sum(std::slice::from_ref(&t))
            .map_err(|e| self.failed(e))?;
        let summed = Vec::<f64>::try_from(&t.to_device(Device::Cpu))
            .map_err(|e| self.failed(e.to_string()))?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    /// Waits for every process, up to `timeout`.
    pub fn barrier(&self, timeout: Duration) -> Result<()> {
        self.group.barrier(timeout).map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests;
