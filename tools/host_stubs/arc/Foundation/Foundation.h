// Declarations-only stand-in for <Foundation/Foundation.h> for the ARC type-check of
// csrc/metal_runtime.mm (check_host.sh, variant "arc"): the few Foundation types the runtime
// uses, each written from the Apple documentation page cited beside it. GNUstep's real headers
// are the other variant; they are not ARC-clean on Debian's GCC-runtime build.
#pragma once
#include <stddef.h>
#include <stdint.h>

// https://developer.apple.com/documentation/objectivec/nsuinteger
typedef unsigned long NSUInteger;
// https://developer.apple.com/documentation/objectivec/nsinteger
typedef long NSInteger;
// https://developer.apple.com/documentation/objectivec/bool
typedef signed char BOOL;
#define YES ((BOOL)1)
#define NO ((BOOL)0)
#define nil ((id)0)

// https://developer.apple.com/documentation/swift/grouping-related-objective-c-constants
#define NS_ENUM(_type, _name) \
    enum _name : _type _name; \
    enum _name : _type
#define NS_OPTIONS(_type, _name) \
    enum _name : _type _name;    \
    enum _name : _type

@class NSString;

// https://developer.apple.com/documentation/objectivec/nsobjectprotocol
@protocol NSObject
@end

// https://developer.apple.com/documentation/objectivec/nsobject-swift.class
// (only as the root class of the classes below: the runtime calls none of its methods)
__attribute__((objc_root_class))
@interface NSObject<NSObject>
@end

// https://developer.apple.com/documentation/foundation/nsstring
@interface NSString : NSObject
// https://developer.apple.com/documentation/foundation/nsstring/utf8string
@property(readonly) const char *UTF8String;
// https://developer.apple.com/documentation/foundation/nsstring/init(utf8string:)
+ (instancetype)stringWithUTF8String:(const char *)nullTerminatedCString;
@end

// https://developer.apple.com/documentation/foundation/nserror
@interface NSError : NSObject
// https://developer.apple.com/documentation/foundation/nserror/localizeddescription
@property(readonly, copy) NSString *localizedDescription;
// https://developer.apple.com/documentation/foundation/nserror/code
@property(readonly) NSInteger code;
@end

// https://developer.apple.com/documentation/foundation/nsurl
@interface NSURL : NSObject
// https://developer.apple.com/documentation/foundation/nsurl/fileurl(withpath:)
+ (NSURL *)fileURLWithPath:(NSString *)path;
@end
