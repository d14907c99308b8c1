"""Analyses of trained models shared by methods: Grad-CAM, linear probing, t-SNE."""
