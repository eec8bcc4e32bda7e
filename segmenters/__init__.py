"""segmenters"""
