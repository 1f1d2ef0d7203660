"""The VAR family (FoundationVision/VAR, class-conditional ImageNet): model, VQVAE, graphs, export."""
