"""Datasets for the tasks that OpenMMLab does not cover."""
