//! Device recompute functions: kernels that derive a page on its GPU
//! (see [`DeviceFunction`]).

use super::device::{Chain, Gpu};
use super::driver::Module;
use crate::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// Threads per block unless [`DeviceFunction::with_block`] says otherwise.
pub const DEFAULT_BLOCK: u32 = 256;

/// A recompute function that runs on a GPU: PTX and its entry point,
/// loaded on each device the first time a page of that device needs it.
///
/// It is registered under a name and a version like a CPU recompute function
/// ([`crate::Mmsb::register_device_function`]) and derives pages that live
/// on a GPU. A propagation launches it on the derived page's device with
/// the parents' device memory (parents elsewhere are copied to that device
/// first), compares its output with the page on the device, and brings
/// back only the bytes that differ: those become the derived delta that is
/// logged, exactly as a CPU function's would be. The recomputes of several
/// levels on one device are queued together on its stream when their
/// inputs are known before the propagation starts (see
/// [`crate::PropagationStats::ahead`]).
///
/// # The kernel's contract
///
/// The entry point takes one parameter, a [`shared_types::RecomputeArgs`]
/// passed by value: the parents as an array of
/// [`shared_types::DeviceInput`] (address and length, in declaration
/// order) and the output (address and length). The output starts zeroed.
/// The kernel is launched on a one-dimensional grid of blocks of
/// [`DeviceFunction::block`] threads (256 unless set), with as many
/// blocks as there are output bytes per thread of a block, at most 32 per
/// multiprocessor: it must cover the whole output itself, with a
/// grid-stride loop. It must be deterministic, read only its inputs and
/// write only its output. Any PTX the driver loads will do: compiled from
/// Rust for `nvptx64-nvidia-cuda` (as `gpu-kernels` is; see
/// `examples/device-function/`), from CUDA C++ by nvcc, or written by hand.
pub struct DeviceFunction {
    ptx: Arc<str>,
    entry: Box<str>,
    block: u32,
    /// The module, loaded once per device (by ordinal).
    loaded: Mutex<Vec<(u32, Arc<Module>)>>,
}

impl std::fmt::Debug for DeviceFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFunction")
            .field("entry", &self.entry)
            .field("block", &self.block)
            .field("ptx_bytes", &self.ptx.len())
            .finish()
    }
}

impl DeviceFunction {
    /// The kernel `entry` of `ptx`.
    ///
    /// # Safety
    /// The kernel must keep the contract of the [type's docs](Self): read
    /// only the input ranges and write only the output range it is given.
    /// Device code can reach memory the host uses (pinned buffers are
    /// mapped into the device's address space), so a kernel that writes
    /// elsewhere can corrupt the process; no check the library makes can
    /// hold a kernel to its ranges.
    ///
    /// # Errors
    /// [`Error::Function`] when `ptx` is empty, holds a NUL byte or does not
    /// declare an entry point called `entry`. Whether the driver accepts
    /// the PTX is known when it is first loaded, on the first recompute
    /// ([`Error::Gpu`] then).
    pub unsafe fn from_ptx(ptx: impl Into<String>, entry: &str) -> Result<Self> {
        let ptx: String = ptx.into();
        let bad = |reason: String| Error::Function { name: entry.to_owned(), reason };
        if ptx.trim().is_empty() {
            return Err(bad("the PTX is empty".into()));
        }
        if ptx.contains('\0') || entry.contains('\0') {
            return Err(bad("the PTX or the entry name holds a NUL byte".into()));
        }
        if !super::ptx::entries(&ptx).contains(&entry) {
            return Err(bad(format!("the PTX declares no entry point `{entry}`")));
        }
        Ok(Self {
            ptx: ptx.into(),
            entry: entry.into(),
            block: DEFAULT_BLOCK,
            loaded: Mutex::new(Vec::new()),
        })
    }

    /// The same kernel launched with blocks of `threads` threads.
    ///
    /// # Errors
    /// [`Error::Function`] unless `threads` is a multiple of 32 from 32 to
    /// 1024.
    pub fn with_block(mut self, threads: u32) -> Result<Self> {
        if !(32..=1024).contains(&threads) || !threads.is_multiple_of(32) {
            return Err(Error::Function {
                name: self.entry.to_string(),
                reason: format!("{threads} threads per block (a multiple of 32 from 32 to 1024)"),
            });
        }
        self.block = threads;
        Ok(self)
    }

    /// The entry point's name.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Threads per block.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// The module on `gpu`, loaded on first use.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the driver refuses the PTX.
    pub(super) fn module(&self, gpu: &Gpu) -> Result<Arc<Module>> {
        let ordinal = gpu.info().ordinal;
        let mut loaded = self.loaded.lock();
        if let Some((_, m)) = loaded.iter().find(|(o, _)| *o == ordinal) {
            return Ok(m.clone());
        }
        let m = Arc::new(gpu.load_module(&self.ptx, &self.entry)?);
        loaded.push((ordinal, m.clone()));
        Ok(m)
    }

    /// Add a run of the kernel over `inputs` for the page whose current
    /// bytes are `old` to `chain` (a chain of `old`'s device); returns the
    /// output page, filled when the chain runs.
    ///
    /// # Errors
    /// As [`Chain::add`], and [`Error::Gpu`] when the PTX does not load.
    pub(crate) fn queue(
        &self,
        chain: &mut Chain,
        old: &super::GpuPage,
        inputs: Vec<super::GpuPage>,
    ) -> Result<super::GpuPage> {
        let module = self.module(old.gpu())?;
        // SAFETY: `from_ptx`, the only way to make a DeviceFunction, is
        // unsafe with the promise that the kernel stays inside its ranges.
        unsafe { chain.add(module, &self.entry, self.block, old, inputs) }
    }
}
