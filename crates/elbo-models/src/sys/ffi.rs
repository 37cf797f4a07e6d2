//! The libtorch operations tch 0.26 does not expose, compiled from `csrc/elbo_ops.cpp`
//! by the build script: the fused Adam/AdamW kernel, dropping gradients, glibc malloc
//! settings, the CUDA autocast dtype, and elbo's own fused GroupNorm (+ SiLU)
//! (`csrc/group_norm.cpp`).
//!
//! The only `unsafe` of the workspace is here: each call passes tch's tensor handles
//! (which are `at::Tensor*`) to a C function that reads them during the call only, and
//! frees the message it may return. When the crate was built without libtorch (a
//! documentation build), [`fused_adam`] reports that it is unavailable and callers use
//! tch's operations.
#![allow(unsafe_code)]

use tch::Tensor;

/// Hyper-parameters of one fused Adam step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedAdamStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Weight decay: decoupled (AdamW) when `decoupled`, else added to the gradient.
    pub weight_decay: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// AdamW's decoupled weight decay rather than Adam's L2 term.
    pub decoupled: bool,
}

#[cfg(elbo_ops)]
pub(crate) mod sys {
    use std::os::raw::{c_char, c_int};
    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn elbo_free_message(text: *mut c_char);
        pub fn elbo_fused_adam(
            params: *const *mut C_tensor,
            grads: *const *mut C_tensor,
            exp_avgs: *const *mut C_tensor,
            exp_avg_sqs: *const *mut C_tensor,
            n: i64,
            step: *mut C_tensor,
            held: *mut C_tensor,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            decoupled: c_int,
        ) -> *mut c_char;
        pub fn elbo_clear_grads(tensors: *const *mut C_tensor, n: i64) -> *mut c_char;
        pub fn elbo_set_grad(tensor: *mut C_tensor, grad: *mut C_tensor) -> *mut c_char;
        pub fn elbo_grad_enabled() -> c_int;
        pub fn elbo_exit_now(code: c_int) -> !;
        pub fn elbo_retain_freed_memory(
            mmap_threshold: c_int,
            trim_threshold: c_int,
        ) -> *mut c_char;
        pub fn elbo_set_cuda_autocast_bf16() -> *mut c_char;
        pub fn elbo_cuda_autocast_dtype() -> *mut c_char;
        pub fn elbo_set_cuda_tf32(matmul: c_int, convolution: c_int) -> *mut c_char;
        pub fn elbo_cuda_tf32() -> c_int;
        pub fn elbo_set_deterministic(on: c_int) -> *mut c_char;
        pub fn elbo_deterministic() -> c_int;
        pub fn elbo_torch_version() -> *mut c_char;
        pub fn elbo_group_norm(
            x: *mut C_tensor,
            shift: *mut C_tensor,
            weight: *mut C_tensor,
            bias: *mut C_tensor,
            groups: i64,
            eps: f64,
            silu: c_int,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
    }

    #[cfg(elbo_cuda_memory)]
    unsafe extern "C" {
        pub fn elbo_cuda_memory_peaks(
            device: c_int,
            allocated: *mut i64,
            reserved: *mut i64,
        ) -> *mut c_char;
        pub fn elbo_cuda_memory_reset_peaks(device: c_int) -> *mut c_char;
    }

    /// Turns a returned message into `Err` (and frees it), nullptr into `Ok`.
    pub fn check(message: *mut c_char) -> Result<(), String> {
        if message.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string from malloc, ours to free.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        unsafe { elbo_free_message(message) };
        Err(text)
    }
}

/// One fused Adam step over `params` with their `grads` and moments `m`, `v` (all the
/// same length, every tensor defined, each parameter's companions of its shape), at the
/// step `step` holds (counted from 1; a one-element float32 tensor on the parameters'
/// device, so that a GPU step reads it there without a copy from the host, which would
/// wait for the device). When `held` is given (a one-element float32 tensor on the same
/// device) and holds 1, nothing changes, moments included: a step held back by a flag
/// the host never reads (libtorch's `found_inf`). `Err` carries libtorch's message (for
/// example a kind or device it does not support), or says the kernel was not built.
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    step: &Tensor,
    held: Option<&Tensor>,
    hyper: FusedAdamStep,
) -> Result<(), String> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n {
        return Err(format!(
            "fused Adam needs one gradient and two moments per parameter: {n} parameters, \
             {} gradients, {} and {} moments",
            grads.len(),
            m.len(),
            v.len()
        ));
    }
    if n == 0 {
        return Ok(());
    }
    #[cfg(elbo_ops)]
    {
        let handles = |ts: &[Tensor]| -> Vec<*mut torch_sys::C_tensor> {
            ts.iter().map(|t| t.as_ptr() as *mut _).collect()
        };
        let (p, g, mm, vv) = (handles(params), handles(grads), handles(m), handles(v));
        // SAFETY: every pointer is a live tensor handle borrowed for the call; the C side
        // copies the handles (reference-counted) and does not keep them.
        let message = unsafe {
            sys::elbo_fused_adam(
                p.as_ptr(),
                g.as_ptr(),
                mm.as_ptr(),
                vv.as_ptr(),
                n as i64,
                step.as_ptr() as *mut _,
                held.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut _),
                hyper.lr,
                hyper.beta1,
                hyper.beta2,
                hyper.weight_decay,
                hyper.eps,
                i32::from(hyper.decoupled),
            )
        };
        sys::check(message)
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = (step, held, hyper);
        Err("elbo-models was built without libtorch: no fused Adam".to_string())
    }
}

/// Drops the gradient of every tensor in `tensors` (it becomes undefined, as after
/// PyTorch's `zero_grad(set_to_none=True)`), so that the next backward pass writes
/// fresh gradients instead of adding them to zeroed ones. `Err` when the kernel was not
/// built (callers then zero the gradients).
pub fn clear_grads(tensors: &[Tensor]) -> Result<(), String> {
    #[cfg(elbo_ops)]
    {
        let handles: Vec<*mut torch_sys::C_tensor> =
            tensors.iter().map(|t| t.as_ptr() as *mut _).collect();
        // SAFETY: live tensor handles borrowed for the call; the C side only resets each
        // tensor's gradient slot.
        sys::check(unsafe { sys::elbo_clear_grads(handles.as_ptr(), handles.len() as i64) })
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = tensors;
        Err("elbo-models was built without libtorch".to_string())
    }
}

/// Makes `grad` the gradient of `tensor` (same shape, kind and device; tch can read a
/// gradient but not set one). `Err` when the kernel was not built.
pub fn set_grad(tensor: &Tensor, grad: &Tensor) -> Result<(), String> {
    if tensor.size() != grad.size() || tensor.kind() != grad.kind() {
        return Err(format!(
            "a gradient of {:?} {:?} for a tensor of {:?} {:?}",
            grad.kind(),
            grad.size(),
            tensor.kind(),
            tensor.size()
        ));
    }
    #[cfg(elbo_ops)]
    {
        // SAFETY: two live tensor handles borrowed for the call; the C side copies the
        // gradient's handle (reference-counted) into the tensor's gradient slot.
        sys::check(unsafe {
            sys::elbo_set_grad(tensor.as_ptr() as *mut _, grad.as_ptr() as *mut _)
        })
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// Whether autograd records operations now, i.e. the caller is not inside
/// [`tch::no_grad`] (tch has no query for it). Without the compiled shim: `true`.
pub fn grad_enabled() -> bool {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments, reads libtorch's thread-local grad mode.
        unsafe { sys::elbo_grad_enabled() != 0 }
    }
    #[cfg(not(elbo_ops))]
    true
}

/// Ends the process now with exit status `code`, running no destructors and no atexit
/// handlers (C's `_exit` after flushing stdio): for a second Ctrl-C while another thread
/// is inside libtorch. Every file elbo writes goes to a temporary name first, so nothing
/// is left half-written under its final name. Without the compiled shim: an abort.
pub fn exit_now(code: i32) -> ! {
    #[cfg(elbo_ops)]
    {
        // SAFETY: an integer in; the call does not return.
        unsafe { sys::elbo_exit_now(code) }
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = code;
        std::process::abort()
    }
}

/// glibc's malloc: blocks up to `mmap_threshold` bytes come from the heap rather than
/// from their own mapping, and the heap keeps up to `trim_threshold` free bytes at its
/// top instead of returning them to the kernel. `Err` on another C library, when glibc
/// refuses a value (it caps the threshold at 32 MiB on 64-bit machines), or without the
/// compiled shim.
pub fn retain_freed_memory(mmap_threshold: i32, trim_threshold: i32) -> Result<(), String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: two integers in; a returned message is freed by `check`.
        sys::check(unsafe { sys::elbo_retain_freed_memory(mmap_threshold, trim_threshold) })
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = (mmap_threshold, trim_threshold);
        Err("elbo-models was built without libtorch".to_string())
    }
}

/// Makes CUDA autocast regions ([`tch::autocast`]) compute in bfloat16 rather than
/// libtorch's default float16 (a process-wide setting of libtorch).
pub fn set_cuda_autocast_bf16() -> Result<(), String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments; a returned message is freed by `check`.
        sys::check(unsafe { sys::elbo_set_cuda_autocast_bf16() })
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// The dtype of CUDA autocast regions, as libtorch names it (`BFloat16`, `Half`).
pub fn cuda_autocast_dtype() -> Result<String, String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments; the returned string is ours and freed by `check`.
        let message = unsafe { sys::elbo_cuda_autocast_dtype() };
        match sys::check(message) {
            Err(name) if !name.starts_with("error: ") => Ok(name),
            Err(error) => Err(error),
            Ok(()) => Err("libtorch returned no dtype".to_string()),
        }
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// Lets float32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA use TF32, or
/// keeps them in full float32: libtorch's two process-wide flags, as PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32` set
/// them. libtorch's defaults differ (matrix products off, convolutions on); the benches
/// state the setting by setting both.
pub fn set_cuda_tf32(matmul: bool, convolution: bool) -> Result<(), String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: two integers in; a returned message is freed by `check`.
        sys::check(unsafe { sys::elbo_set_cuda_tf32(i32::from(matmul), i32::from(convolution)) })
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = (matmul, convolution);
        Err("elbo-models was built without libtorch".to_string())
    }
}

/// Whether CUDA may use TF32 for float32: (matrix products, convolutions).
pub fn cuda_tf32() -> Result<(bool, bool), String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments, an integer out.
        let bits = unsafe { sys::elbo_cuda_tf32() };
        if bits < 0 {
            return Err("libtorch refused to report its TF32 settings".to_string());
        }
        Ok((bits & 1 != 0, bits & 2 != 0))
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// Deterministic algorithms for every operation, or not: libtorch's process-wide switch
/// (PyTorch's `torch.use_deterministic_algorithms`), with cuDNN's deterministic choice
/// and without its benchmark search. With it on, an operation that has no deterministic
/// kernel fails, naming itself; on CUDA, cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG`
/// (`:4096:8`) in the environment before the process starts. A process-wide setting,
/// made by executables (`elbo train --deterministic`).
pub fn set_deterministic(on: bool) -> Result<(), String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: an integer in; a returned message is freed by `check`.
        sys::check(unsafe { sys::elbo_set_deterministic(i32::from(on)) })
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = on;
        Err("elbo-models was built without libtorch".to_string())
    }
}

/// Whether deterministic algorithms are on ([`set_deterministic`]).
pub fn deterministic() -> Result<bool, String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments, an integer out.
        Ok(unsafe { sys::elbo_deterministic() } != 0)
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// The loaded libtorch's version, as its headers name it (`2.13.0`).
pub fn torch_version() -> Result<String, String> {
    #[cfg(elbo_ops)]
    {
        // SAFETY: no arguments; the message it returns is freed by `check`.
        match sys::check(unsafe { sys::elbo_torch_version() }) {
            Err(version) => Ok(version),
            Ok(()) => Err("libtorch returned no version".to_string()),
        }
    }
    #[cfg(not(elbo_ops))]
    Err("elbo-models was built without libtorch".to_string())
}

/// The CUDA caching allocator's peaks on `device` since the start or the last
/// [`reset_cuda_memory_peaks`]: (bytes allocated to tensors, bytes reserved from the
/// device), as PyTorch's `torch.cuda.max_memory_allocated` and `max_memory_reserved`.
/// `Err` when elbo-models was built without a CUDA libtorch and CUDA's headers.
pub fn cuda_memory_peaks(device: usize) -> Result<(i64, i64), String> {
    #[cfg(elbo_cuda_memory)]
    {
        let (mut allocated, mut reserved) = (0i64, 0i64);
        // SAFETY: an integer in, two integers out through live references.
        sys::check(unsafe {
            sys::elbo_cuda_memory_peaks(device as i32, &mut allocated, &mut reserved)
        })?;
        Ok((allocated, reserved))
    }
    #[cfg(not(elbo_cuda_memory))]
    {
        let _ = device;
        Err("elbo-models was built without a CUDA libtorch and CUDA's headers".to_string())
    }
}

/// Starts the caching allocator's peaks on `device` afresh from its current use.
pub fn reset_cuda_memory_peaks(device: usize) -> Result<(), String> {
    #[cfg(elbo_cuda_memory)]
    {
        // SAFETY: an integer in; a returned message is freed by `check`.
        sys::check(unsafe { sys::elbo_cuda_memory_reset_peaks(device as i32) })
    }
    #[cfg(not(elbo_cuda_memory))]
    {
        let _ = device;
        Err("elbo-models was built without a CUDA libtorch and CUDA's headers".to_string())
    }
}

/// `group_norm(x + shift)`, then SiLU when `silu`, as one autograd operation: `x` of
/// shape (N, C, ...), `shift` (optional) of shape (N, C) added to every position of its
/// example and channel, `groups` dividing C, `weight` and `bias` of shape (C), variance
/// with `eps` as GroupNorm's. Gradients flow to `x`, `shift`, `weight` and `bias` (first
/// order only: a backward pass that builds a graph fails). Float32 CPU tensors only;
/// `Err` with the reason otherwise, or when the kernel was not built.
pub fn group_norm(
    x: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    groups: i64,
    eps: f64,
    silu: bool,
) -> Result<Tensor, String> {
    #[cfg(elbo_ops)]
    {
        let handle = |t: &Tensor| t.as_ptr() as *mut torch_sys::C_tensor;
        let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
        // SAFETY: live tensor handles borrowed for the call (shift may be null); on
        // success the C side stores in `out` a new handle that we then own.
        sys::check(unsafe {
            sys::elbo_group_norm(
                handle(x),
                shift.map_or(std::ptr::null_mut(), handle),
                handle(weight),
                handle(bias),
                groups,
                eps,
                i32::from(silu),
                &mut out,
            )
        })?;
        if out.is_null() {
            return Err("group_norm returned no tensor".to_string());
        }
        // SAFETY: `out` is a fresh handle from `new at::Tensor`, owned by nobody else.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
    #[cfg(not(elbo_ops))]
    {
        let _ = (x, shift, weight, bias, groups, eps, silu);
        Err("elbo-models was built without libtorch".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_dtype_can_be_set_to_bfloat16() {
        let _generator = crate::testing::generator_lock();
        set_cuda_autocast_bf16().unwrap();
        assert_eq!(cuda_autocast_dtype().unwrap(), "BFloat16");
    }

    #[test]
    fn deterministic_algorithms_are_switched_on_and_off_and_the_version_is_read() {
        let _generator = crate::testing::generator_lock();
        let before = deterministic().unwrap();
        set_deterministic(true).unwrap();
        assert!(deterministic().unwrap());
        // Still computes: every CPU operation elbo uses has a deterministic kernel.
        let x = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(x.matmul(&x).sum(tch::Kind::Float).double_value(&[]), 64.0);
        set_deterministic(false).unwrap();
        assert!(!deterministic().unwrap());
        set_deterministic(before).unwrap();
        let version = torch_version().unwrap();
        assert!(
            version.split('.').count() >= 3 && version.starts_with("2."),
            "{version}"
        );
    }

    #[test]
    fn tf32_is_set_for_both_matmuls_and_convolutions_and_cleared_again() {
        // Process-wide flags: under the one lock the unit tests share.
        let _generator = crate::testing::generator_lock();
        let (matmul, convolution) = cuda_tf32().unwrap();
        set_cuda_tf32(true, true).unwrap();
        assert_eq!(cuda_tf32().unwrap(), (true, true));
        set_cuda_tf32(false, false).unwrap();
        assert_eq!(cuda_tf32().unwrap(), (false, false));
        set_cuda_tf32(true, false).unwrap();
        assert_eq!(cuda_tf32().unwrap(), (true, false));
        // As they were, for the tests after this one.
        set_cuda_tf32(matmul, convolution).unwrap();
        assert_eq!(cuda_tf32().unwrap(), (matmul, convolution));
    }

    #[cfg(not(elbo_cuda_memory))]
    #[test]
    fn device_memory_peaks_need_a_cuda_build_and_say_so() {
        let err = cuda_memory_peaks(0).unwrap_err();
        assert!(err.contains("without a CUDA libtorch"), "{err}");
        let err = reset_cuda_memory_peaks(0).unwrap_err();
        assert!(err.contains("without a CUDA libtorch"), "{err}");
    }

    #[test]
    fn cleared_gradients_are_undefined_and_the_next_backward_starts_afresh() {
        let _generator = crate::testing::generator_lock();
        let x = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&x * 3.0).sum(tch::Kind::Float).backward();
        assert!(x.grad().defined());
        clear_grads(std::slice::from_ref(&x)).unwrap();
        assert!(!x.grad().defined(), "the gradient is dropped, not zeroed");
        (&x * 2.0).sum(tch::Kind::Float).backward();
        // Not 3 + 2: nothing was accumulated onto the old gradient.
        assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![2.0, 2.0]);
    }

    #[test]
    fn a_gradient_is_set_where_there_was_none_and_checked_for_shape() {
        let _generator = crate::testing::generator_lock();
        let x = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        assert!(!x.grad().defined());
        set_grad(&x, &Tensor::from_slice(&[0.5f32, -1.0])).unwrap();
        assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![0.5, -1.0]);
        let err = set_grad(&x, &Tensor::from_slice(&[1.0f32])).unwrap_err();
        assert!(err.contains("[1]") && err.contains("[2]"), "{err}");
    }

    #[test]
    fn grad_mode_is_read_inside_and_outside_no_grad() {
        let _generator = crate::testing::generator_lock();
        assert!(grad_enabled());
        assert!(!tch::no_grad(grad_enabled));
        assert!(grad_enabled(), "restored after the region");
    }

    #[test]
    fn mismatched_lists_are_refused_before_libtorch_sees_them() {
        let _generator = crate::testing::generator_lock();
        let p = [Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu))];
        let hyper = FusedAdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
            decoupled: false,
        };
        let step = Tensor::from_slice(&[1.0f32]);
        let err = fused_adam(&p, &[], &p, &p, &step, None, hyper).unwrap_err();
        assert!(err.contains("1 parameters, 0 gradients"), "{err}");
    }
}
