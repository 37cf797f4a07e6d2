//! The processes a training loop runs in, as one value: [`Replicas`], implemented by a
//! data-parallel job ([`Parallel`]) and by a single process ([`Alone`]). The loop calls
//! the same methods either way; alone, every collective is the identity.

use tch::Tensor;

use super::Parallel;
use crate::error::Result;

/// What the training loop asks of the processes it runs in. Every method is a
/// collective: in a job of several processes, each must call it, in the same order.
pub trait Replicas {
    /// This process's rank, in `0..size`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// This process's contiguous slice of a global batch: `len * rank / size` to
    /// `len * (rank + 1) / size` (equal slices when the size divides the batch).
    fn shard<'b>(&self, global: &'b [usize]) -> &'b [usize] {
        let (n, r, w) = (global.len(), self.rank(), self.size());
        &global[n * r / w..n * (r + 1) / w]
    }
    /// Which ranks report `ok == false`, the same list in every process.
    fn failing_ranks(&self, ok: bool) -> Result<Vec<usize>>;
    /// Checks that every process holds the same `text` (`what` names it in the error,
    /// `advice` ends it; a process that differs adds `explain(rank 0's text)`).
    fn same_everywhere(
        &self,
        what: &str,
        text: &str,
        explain: &dyn Fn(&str) -> String,
        advice: &str,
    ) -> Result<()>;
    /// Overwrites every tensor with rank 0's, in place.
    fn broadcast_from_root(&self, tensors: &[Tensor]) -> Result<()>;
    /// The sum over processes of each value.
    fn sum(&self, values: &mut [f64]) -> Result<()>;
    /// Whether the loop stops after this step, given the stop decision the step's
    /// reduction `agreed` on and this process's own flag now. Every process of a job
    /// must decide alike, so a job goes by the agreed decision; a process alone may also
    /// heed a request that came during the step.
    fn stops(&self, agreed: bool, flag_now: bool) -> bool {
        let _ = flag_now;
        agreed
    }
    /// Waits, with a longer timeout than a step's, while rank 0 alone writes a
    /// checkpoint and runs the epoch's end.
    fn wait_for_root(&self) -> Result<()>;
    /// Replaces the gradient of every parameter of `params` by the sum over the processes
    /// of each one's gradient times its `share` of the global batch (so, by the global
    /// batch's mean gradient), and each value of `shared` by its sum over the processes,
    /// in the same round. A parameter without a gradient counts as zero, and gets one if
    /// any process had one.
    fn reduce(&self, params: &[Tensor], share: f64, shared: &mut [f64]) -> Result<()>;
}

/// A single process: rank 0 of 1, every collective the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Alone;

impl Replicas for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn failing_ranks(&self, ok: bool) -> Result<Vec<usize>> {
        Ok(if ok { Vec::new() } else { vec![0] })
    }
    fn same_everywhere(
        &self,
        _what: &str,
        _text: &str,
        _explain: &dyn Fn(&str) -> String,
        _advice: &str,
    ) -> Result<()> {
        Ok(())
    }
    fn broadcast_from_root(&self, _tensors: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn sum(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn stops(&self, agreed: bool, flag_now: bool) -> bool {
        agreed || flag_now
    }
    fn wait_for_root(&self) -> Result<()> {
        Ok(())
    }
    fn reduce(&self, _params: &[Tensor], _share: f64, _shared: &mut [f64]) -> Result<()> {
        // One process's share is the whole batch: its gradient is the batch's.
        Ok(())
    }
}

impl Replicas for Parallel {
    fn rank(&self) -> usize {
        Parallel::rank(self)
    }
    fn size(&self) -> usize {
        Parallel::size(self)
    }
    fn failing_ranks(&self, ok: bool) -> Result<Vec<usize>> {
        Parallel::failing_ranks(self, ok)
    }
    fn same_everywhere(
        &self,
        what: &str,
        text: &str,
        explain: &dyn Fn(&str) -> String,
        advice: &str,
    ) -> Result<()> {
        Parallel::same_everywhere(self, what, text, explain, advice)
    }
    fn broadcast_from_root(&self, tensors: &[Tensor]) -> Result<()> {
        Parallel::broadcast_from_root(self, tensors)
    }
    fn sum(&self, values: &mut [f64]) -> Result<()> {
        Parallel::sum(self, values)
    }
    fn wait_for_root(&self) -> Result<()> {
        // Through the store: NCCL would time a collective barrier with the step's
        // timeout, whatever this one waits.
        self.group()
            .store_barrier(self.slow_timeout())
            .map_err(|detail| crate::Error::Distributed { detail })
    }
    fn reduce(&self, params: &[Tensor], share: f64, shared: &mut [f64]) -> Result<()> {
        self.reduce_gradients(params, share, shared)
    }
}

/// One optimiser step's part in the processes it runs in.
pub struct Replica<'a> {
    /// The processes (the gradients are reduced through them).
    pub replicas: &'a dyn Replicas,
    /// This process's share of the global batch (its examples over the batch's).
    pub share: f64,
    /// Whether this process was asked to stop (Ctrl-C): the job stops after this step if
    /// any process was.
    pub stop_requested: bool,
}

impl Replica<'static> {
    /// A step of a single process, over the whole batch, not asked to stop.
    pub fn alone() -> Replica<'static> {
        Replica {
            replicas: &Alone,
            share: 1.0,
            stop_requested: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_is_rank_0_of_1_and_its_collectives_change_nothing() {
        let _generator = crate::testing::generator_lock();
        let alone = Alone;
        assert_eq!((alone.rank(), alone.size()), (0, 1));
        let global = [5, 3, 9];
        assert_eq!(alone.shard(&global), &global);
        assert!(alone.failing_ranks(true).unwrap().is_empty());
        assert_eq!(alone.failing_ranks(false).unwrap(), [0]);
        let mut values = [1.5, -2.0];
        alone.sum(&mut values).unwrap();
        assert_eq!(values, [1.5, -2.0]);
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&w * &w).sum(tch::Kind::Float).backward();
        alone
            .reduce(std::slice::from_ref(&w), 1.0, &mut values)
            .unwrap();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), [2.0, 4.0]);
        assert_eq!(values, [1.5, -2.0]);
    }
}
