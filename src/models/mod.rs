//! Models: diffusers UNet2DModel, CLIP vision, configs and weight loading.
pub mod config;
pub mod layers;
pub mod unet;
pub mod weights;
