//! Layers the builder puts around every endpoint the maker makes.

use tower_layer::Layer;

use super::Target;

/// A layer the [`Builder`](super::Builder) applies to every endpoint its maker makes,
/// with the endpoint's [`Target`] (for layers that need its state, such as passive
/// health). Added with [`Builder::endpoint_layer`](super::Builder::endpoint_layer) or
/// the shortcuts beside it; `tower::layer::util::Identity` is none.
pub trait EndpointLayer<K, S> {
    /// The wrapped endpoint.
    type Service;

    /// Wraps `inner`, the endpoint of `target`.
    fn layer(&self, target: &Target<'_, K>, inner: S) -> Self::Service;
}

impl<K, S> EndpointLayer<K, S> for tower_layer::Identity {
    type Service = S;

    fn layer(&self, _target: &Target<'_, K>, inner: S) -> S {
        inner
    }
}

/// A layer made per endpoint by a closure of its target; see
/// [`Builder::endpoint_layer`](super::Builder::endpoint_layer).
#[derive(Clone, Debug)]
pub struct PerEndpoint<F>(pub(crate) F);

impl<K, S, F, L> EndpointLayer<K, S> for PerEndpoint<F>
where
    F: Fn(&Target<'_, K>) -> L,
    L: Layer<S>,
{
    type Service = L::Service;

    fn layer(&self, target: &Target<'_, K>, inner: S) -> L::Service {
        (self.0)(target).layer(inner)
    }
}

/// `Outer` around `Inner`: the endpoint layers added so far, and one more around them.
#[derive(Clone, Debug)]
pub struct Around<Inner, Outer> {
    pub(crate) inner: Inner,
    pub(crate) outer: Outer,
}

impl<K, S, I, O> EndpointLayer<K, S> for Around<I, O>
where
    I: EndpointLayer<K, S>,
    O: EndpointLayer<K, I::Service>,
{
    type Service = O::Service;

    fn layer(&self, target: &Target<'_, K>, inner: S) -> O::Service {
        self.outer.layer(target, self.inner.layer(target, inner))
    }
}
