//! The data sets this crate knows by name.

use std::fmt;
use std::str::FromStr;

use crate::error::DataError;
use crate::manifest::{self, Manifest};

/// One of the data sets that can be downloaded and loaded by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// MNIST handwritten digits: 60,000 + 10,000 grey 28 x 28 images, 10 classes.
    Mnist,
    /// Fashion-MNIST (Zalando): the same layout as MNIST, 10 clothing classes.
    FashionMnist,
    /// CIFAR-10: 50,000 + 10,000 colour 32 x 32 images, 10 classes.
    Cifar10,
}

impl DatasetKind {
    /// Every kind, in a fixed order.
    pub const ALL: [DatasetKind; 3] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
    ];

    /// The name used on the command line and as the folder name under the data folder:
    /// `mnist`, `fashion-mnist`, `cifar10`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }

    /// The number of classes (labels are `0..classes`).
    pub fn classes(self) -> usize {
        10
    }

    /// Where the files come from and their checksums.
    pub fn manifest(self) -> Manifest {
        match self {
            DatasetKind::Mnist => manifest::MNIST,
            DatasetKind::FashionMnist => manifest::FASHION_MNIST,
            DatasetKind::Cifar10 => manifest::CIFAR10,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| DataError::Invalid {
                what: "data set name",
                expected: "mnist, fashion-mnist or cifar10".into(),
                found: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in DatasetKind::ALL {
            assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        assert!("svhn".parse::<DatasetKind>().is_err());
    }
}
