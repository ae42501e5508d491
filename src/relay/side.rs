//! The two peers of a tunnel, the two directions between them, and values
//! kept once per side or once per direction. Two small index types instead
//! of bare `[T; 2]`s, so an array of per-side values cannot be indexed by a
//! direction by mistake.

use std::fmt;
use std::ops::{Index, IndexMut};

/// One of the two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Client, Side::Backend];

    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// The `direction` label of `sluice_ws_closes_total`: what sluice sent
    /// toward this side.
    pub fn toward_label(self) -> &'static str {
        match self {
            Side::Client => "to_client",
            Side::Backend => "to_backend",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::ClientToBackend, Direction::BackendToClient];

    pub fn sender(self) -> Side {
        match self {
            Direction::ClientToBackend => Side::Client,
            Direction::BackendToClient => Side::Backend,
        }
    }

    pub fn receiver(self) -> Side {
        self.sender().other()
    }

    pub fn reverse(self) -> Direction {
        match self {
            Direction::ClientToBackend => Direction::BackendToClient,
            Direction::BackendToClient => Direction::ClientToBackend,
        }
    }

    /// The `direction` label of the frame and byte counters.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToBackend => "client_to_backend",
            Direction::BackendToClient => "backend_to_client",
        }
    }
}

/// A value for each side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PerSide<T>([T; 2]);

impl<T> PerSide<T> {
    pub fn new(client: T, backend: T) -> PerSide<T> {
        PerSide([client, backend])
    }
}

impl<T> Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        &self.0[side as usize]
    }
}

impl<T> IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        &mut self.0[side as usize]
    }
}

/// A value for each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PerDirection<T>([T; 2]);

impl<T> PerDirection<T> {
    pub fn new(client_to_backend: T, backend_to_client: T) -> PerDirection<T> {
        PerDirection([client_to_backend, backend_to_client])
    }
}

impl<T> Index<Direction> for PerDirection<T> {
    type Output = T;
    fn index(&self, direction: Direction) -> &T {
        &self.0[direction as usize]
    }
}

impl<T> IndexMut<Direction> for PerDirection<T> {
    fn index_mut(&mut self, direction: Direction) -> &mut T {
        &mut self.0[direction as usize]
    }
}
