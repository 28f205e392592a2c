//! TCP balancing against real redis-server processes.
