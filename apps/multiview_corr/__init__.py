"""Multiview-equivariance finetuning of ViT features for 3D correspondence.

Implements "Multiview Equivariance Improves 3D Correspondence Understanding with Minimal
Feature Finetuning" (You et al., ICLR 2025, arXiv:2411.19458; reference code
qq456cvb/3DCorrEnhance) on geo3d's renderer and ViT.
"""
