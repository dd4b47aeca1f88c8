//! Who has the machine: every integration test runs in one process, two at a time by default, so
//! a test that sets process-wide state (an environment variable every child inherits) or that
//! measures rates another test's load would change must have the machine to itself. It calls
//! [`alone`] before anything else; every [`World`](crate::World) holds a [`Shared`] turn, so
//! such a test waits until no world is alive, and new worlds wait until it is done. Tests that
//! make no world (a raw moto call, the static binary in a chroot) are light and not counted.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

static MACHINE: RwLock<()> = RwLock::new(());

/// What this thread holds. A test may make several worlds, one after another or nested: only
/// the first takes the lock. A second read of a lock a writer waits for would wait forever.
#[derive(Default)]
enum Held {
    #[default]
    Nothing,
    Shared(usize, RwLockReadGuard<'static, ()>),
    Alone,
}

thread_local! {
    static HELD: RefCell<Held> = const { RefCell::new(Held::Nothing) };
}

/// A world's share of the machine, released when the world is dropped. Not `Send`: the turn
/// belongs to the thread that made the world (worlds may still be shared by reference).
pub struct Shared {
    _thread_bound: PhantomData<MutexGuard<'static, ()>>,
}

impl Shared {
    /// Waits while a test has the machine alone.
    pub fn take() -> Shared {
        HELD.with_borrow_mut(|held| {
            *held = match std::mem::take(held) {
                Held::Nothing => {
                    Held::Shared(1, MACHINE.read().unwrap_or_else(PoisonError::into_inner))
                }
                Held::Shared(n, guard) => Held::Shared(n + 1, guard),
                Held::Alone => Held::Alone,
            }
        });
        Shared {
            _thread_bound: PhantomData,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        HELD.with_borrow_mut(|held| {
            *held = match std::mem::take(held) {
                Held::Shared(1, _) | Held::Nothing => Held::Nothing,
                Held::Shared(n, guard) => Held::Shared(n - 1, guard),
                Held::Alone => Held::Alone,
            }
        });
    }
}

/// The machine to this test alone until the returned value is dropped: waits for every living
/// world to go, and holds back new ones (this thread's own excepted).
#[must_use = "the machine is this test's only while the value lives"]
pub struct Alone {
    _guard: RwLockWriteGuard<'static, ()>,
}

/// See [`Alone`]. Call it first, before this test makes a world.
pub fn alone() -> Alone {
    HELD.with_borrow(|held| {
        assert!(
            matches!(held, Held::Nothing),
            "alone() called by a test that already holds a world: call it first"
        );
    });
    let guard = MACHINE.write().unwrap_or_else(PoisonError::into_inner);
    HELD.with_borrow_mut(|held| *held = Held::Alone);
    Alone { _guard: guard }
}

impl Drop for Alone {
    fn drop(&mut self) {
        HELD.with_borrow_mut(|held| *held = Held::Nothing);
    }
}
