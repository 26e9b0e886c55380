//! TODO(merge): stand-in for the NATS service registry until the store branch lands.

/// Stand-in for `gatehouse_nats::ServiceRegistry`.
pub mod nats {
    pub struct ServiceRegistry;

    impl ServiceRegistry {
        pub async fn connect(
            _servers: Vec<String>,
            _bucket: &str,
        ) -> Result<ServiceRegistry, String> {
            Err("the NATS service registry is not available before the store merge".into())
        }

        pub fn is_connected(&self) -> bool {
            false
        }
    }

    impl gatehouse_node::upstream::ServiceNodes for ServiceRegistry {
        fn nodes(&self, _service: &str) -> Vec<String> {
            Vec::new()
        }
    }
}
