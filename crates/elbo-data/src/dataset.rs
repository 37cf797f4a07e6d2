//! A labelled image data set held as `u8` arrays, and its train/test splits.

use std::fmt;
use std::sync::Arc;

use ndarray::{Array1, Array4, ArrayView1, ArrayView3, ArrayView4, Axis};

use crate::error::{DataError, Result};

/// Images of shape (N, C, H, W) and their labels (N), as unsigned bytes.
///
/// The images are always in standard (row-major, contiguous) layout: in memory, or
/// mapped from a packed file ([`Dataset::mapped`]), whose pages every process reading
/// it shares.
#[derive(Clone)]
pub struct Dataset {
    images: Storage,
    labels: Array1<u8>,
}

/// Where a data set's pixels are.
#[derive(Clone)]
enum Storage {
    Owned(Array4<u8>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        shape: [usize; 4],
    },
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("images", &self.images().shape())
            .field("mapped", &matches!(self.images, Storage::Mapped { .. }))
            .field("labels", &self.labels.len())
            .finish()
    }
}

impl PartialEq for Dataset {
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels && self.images() == other.images()
    }
}

impl Dataset {
    /// A data set from images (N, C, H, W) and labels (N); the counts must agree.
    pub fn new(images: Array4<u8>, labels: Array1<u8>) -> Result<Self> {
        let (n_images, n_labels) = (images.len_of(Axis(0)), labels.len());
        if n_images != n_labels {
            return Err(DataError::Invalid {
                what: "data set",
                expected: format!("as many labels as images ({n_images})"),
                found: format!("{n_labels} labels"),
            });
        }
        let images = if images.is_standard_layout() {
            images
        } else {
            images.as_standard_layout().into_owned()
        };
        Ok(Dataset {
            images: Storage::Owned(images),
            labels,
        })
    }

    /// A data set whose images are the bytes `offset..` of the mapped file `map`, in
    /// (N, C, H, W) order with `shape`'s sizes, and `labels` (N).
    pub fn mapped(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        shape: [usize; 4],
        labels: Array1<u8>,
    ) -> Result<Self> {
        let len = shape.iter().product::<usize>();
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(DataError::Invalid {
                what: "mapped data set",
                expected: format!("{len} bytes of images from byte {offset}"),
                found: format!("a file of {} bytes", map.len()),
            });
        }
        if shape[0] != labels.len() {
            return Err(DataError::Invalid {
                what: "data set",
                expected: format!("as many labels as images ({})", shape[0]),
                found: format!("{} labels", labels.len()),
            });
        }
        Ok(Dataset {
            images: Storage::Mapped { map, offset, shape },
            labels,
        })
    }

    /// Joins data sets of the same image shape, in order (e.g. CIFAR-10's five
    /// training batches).
    pub fn concatenate(parts: &[Dataset]) -> Result<Self> {
        let views: Vec<_> = parts.iter().map(|d| d.images()).collect();
        let labels: Vec<_> = parts.iter().map(|d| d.labels.view()).collect();
        let images = ndarray::concatenate(Axis(0), &views).map_err(|e| DataError::Invalid {
            what: "data sets to join",
            expected: "images of one shape".into(),
            found: e.to_string(),
        })?;
        let labels = ndarray::concatenate(Axis(0), &labels).map_err(|e| DataError::Invalid {
            what: "data sets to join",
            expected: "one-dimensional labels".into(),
            found: e.to_string(),
        })?;
        Dataset::new(images, labels)
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of one image: [channels, height, width].
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images().shape().to_vec();
        [s[1], s[2], s[3]]
    }

    /// All images, (N, C, H, W).
    pub fn images(&self) -> ArrayView4<'_, u8> {
        match &self.images {
            Storage::Owned(images) => images.view(),
            Storage::Mapped { map, offset, shape } => {
                let len = shape.iter().product::<usize>();
                // The range and shape were checked when the data set was made.
                ArrayView4::from_shape(*shape, &map[*offset..*offset + len])
                    .expect("a mapped data set's shape fits its bytes")
            }
        }
    }

    /// Whether the images are mapped from a file rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.images, Storage::Mapped { .. })
    }

    /// All labels, (N).
    pub fn labels(&self) -> ArrayView1<'_, u8> {
        self.labels.view()
    }

    /// Example `index`: its image (C, H, W) and label, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<(ArrayView3<'_, u8>, u8)> {
        let label = *self.labels.get(index)?;
        Some((self.images().index_axis_move(Axis(0), index), label))
    }

    /// The images and labels (a mapped data set's images copied into memory).
    pub fn into_parts(self) -> (Array4<u8>, Array1<u8>) {
        match self.images {
            Storage::Owned(images) => (images, self.labels),
            Storage::Mapped { .. } => (self.images().to_owned(), self.labels),
        }
    }
}

/// A data set's training and test splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// The training split.
    pub train: Dataset,
    /// The test split.
    pub test: Dataset,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize, first_label: u8) -> Dataset {
        let images = Array4::from_shape_fn((n, 1, 2, 2), |(i, _, r, c)| (10 * i + 2 * r + c) as u8);
        let labels = Array1::from_shape_fn(n, |i| first_label + i as u8);
        Dataset::new(images, labels).unwrap()
    }

    #[test]
    fn counts_must_agree() {
        let err = Dataset::new(Array4::zeros((3, 1, 2, 2)), Array1::zeros(2)).unwrap_err();
        assert!(
            err.to_string().contains("as many labels as images (3)"),
            "{err}"
        );
    }

    #[test]
    fn non_standard_layouts_are_made_contiguous() {
        let images = Array4::from_shape_fn((2, 1, 2, 3), |(i, _, r, c)| (i * 6 + r * 3 + c) as u8);
        let mut transposed = images;
        transposed.swap_axes(2, 3);
        let d = Dataset::new(transposed.clone(), Array1::zeros(2)).unwrap();
        assert!(d.images().is_standard_layout());
        assert_eq!(d.images(), transposed.view());
    }

    #[test]
    fn accessors_and_concatenation() {
        let joined = Dataset::concatenate(&[tiny(2, 0), tiny(3, 5)]).unwrap();
        assert_eq!((joined.len(), joined.image_shape()), (5, [1, 2, 2]));
        let (image, label) = joined.get(3).unwrap();
        assert_eq!((image[[0, 1, 1]], label), (13, 6));
        assert!(joined.get(5).is_none());
        let other = Dataset::new(Array4::zeros((1, 3, 2, 2)), Array1::zeros(1)).unwrap();
        assert!(Dataset::concatenate(&[tiny(1, 0), other]).is_err());
    }
}
