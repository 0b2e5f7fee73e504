"""trajscope.analysis"""
