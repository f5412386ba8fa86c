//! Models: diffusers UNet2DModel, CLIP vision, configs and weight loading.
pub mod clip;
pub mod clip_preprocess;
pub mod layers;
pub mod unet;
pub mod weights;
