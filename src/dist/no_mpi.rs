//! Stands in for `mpi.rs` in builds without the `distributed` feature (or off Unix):
//! `init` says how to get MPI support, so no other method can ever run.

use crate::settings::Launcher;
use std::convert::Infallible;

pub struct Mpi {
    never: Infallible,
    pub name: String,
    pub rank: usize,
    pub size: usize,
}

impl Mpi {
    pub fn init(_library: Option<&str>, _launcher: &Launcher) -> Result<Mpi, String> {
        Err(if cfg!(unix) {
            "this irontensor was built without MPI support: build it with `cargo build --release --features distributed` \
             (set IRONTENSOR_DIST=off to run each process on its own)"
                .into()
        } else {
            "training over MPI needs Linux or macOS; set IRONTENSOR_DIST=off to run each process on its own".into()
        })
    }

    pub fn allreduce_sum(&self, _: &mut [f32]) -> Result<(), String> {
        match self.never {}
    }

    pub fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), String> {
        match self.never {}
    }

    pub fn barrier(&self) -> Result<(), String> {
        match self.never {}
    }

    pub fn abort(&self, _: i32) {
        match self.never {}
    }

    pub fn finalize(&self) -> Result<(), String> {
        match self.never {}
    }
}
