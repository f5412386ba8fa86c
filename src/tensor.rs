//! Tensors: a shape and storage on one backend. Activations are NHWC (`[n, h, w, c]`);
//! sequences are `[n, len, dim]`; matrices `[rows, cols]`. Element type is f32 on the host;
//! device backends choose their storage type (f16 on the GPU) behind the same handle.

use std::any::Any;
use std::sync::Arc;

/// Where a tensor's elements live.
#[derive(Clone)]
pub enum Storage {
    /// Host memory, f32, row-major in the tensor's shape.
    Host(Arc<Vec<f32>>),
    /// Memory owned by a device backend; only that backend can read it.
    Device(Arc<dyn Any + Send + Sync>),
}

/// A shaped tensor on some backend. Cloning is cheap (storage is shared, immutable).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.storage {
            Storage::Host(_) => "host",
            Storage::Device(_) => "device",
        };
        write!(f, "Tensor({:?}, {kind})", self.shape)
    }
}

impl Tensor {
    /// A host tensor; `data.len()` must equal the product of `shape`.
    pub fn host(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data does not match shape {shape:?}"
        );
        Tensor {
            shape,
            storage: Storage::Host(Arc::new(data)),
        }
    }
    /// A device tensor; the backend that made `storage` is the only one that can read it.
    pub fn device(shape: Vec<usize>, storage: Arc<dyn Any + Send + Sync>) -> Self {
        Tensor {
            shape,
            storage: Storage::Device(storage),
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The host data, if this tensor lives on the host.
    pub fn host_data(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Host(v) => Some(v.as_slice()),
            Storage::Device(_) => None,
        }
    }
    /// Same storage, another shape with the same element count.
    pub fn reshape(&self, shape: Vec<usize>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape {:?} -> {shape:?}",
            self.shape
        );
        Tensor {
            shape,
            storage: self.storage.clone(),
        }
    }
    /// Dims of an NHWC tensor.
    pub fn nhwc(&self) -> (usize, usize, usize, usize) {
        assert_eq!(
            self.shape.len(),
            4,
            "expected NHWC tensor, got {:?}",
            self.shape
        );
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
}
