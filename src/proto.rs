//! Generated protobuf and gRPC code, nested by proto package so cross-package references
//! resolve, plus short aliases for the packages the rest of the crate uses.

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
            pub mod asset {
                pub mod v1 {
                    tonic::include_proto!("build.bazel.remote.asset.v1");
                }
            }
        }
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
    }
}

pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod devtools {
        pub mod remoteworkers {
            pub mod v1test2 {
                tonic::include_proto!("google.devtools.remoteworkers.v1test2");
            }
        }
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use build::bazel::remote::asset::v1 as asset;
pub use build::bazel::remote::execution::v2 as remote_execution;
pub use build::bazel::semver;
pub use google::devtools::remoteworkers::v1test2 as remoteworkers;
pub use google::{bytestream, longrunning, rpc};

/// Encoded `FileDescriptorSet` of every proto above, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rexd_descriptor");
